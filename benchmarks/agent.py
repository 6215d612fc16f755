#!/usr/bin/env python3
"""Agent benchmark: its cost with one seed and two fetch jobs, and a fetch through the agent
vs through the CLI from the same seeder, measured side by side in one run.

Printed: the agent's peak RSS and CPU (% of one core) while it seeds one image and fetches
two others into loop-device partitions, and the fetch throughput agent/CLI as a ratio.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))  # helpers.collection: the checkout as the collection
from helpers.collection import importable  # noqa: E402

importable()

from ansible_collections.p2pfleet.imaging.plugins.module_utils._agent_client import AgentClient, AgentError  # noqa: E402
from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine import metainfo  # noqa: E402
from bench_files import losetup, make_image  # noqa: E402

P2PFLEET = [sys.executable, os.path.join(ROOT, "bin", "p2pfleet")]
MIB = 1 << 20
PORTS = iter(range(47400, 47500))
ROUNDS = 3


def loop_device(path, size):
    with open(path, "wb") as f:
        f.truncate(size)
    return losetup(path)


def seeder(manifest, image):
    port = next(PORTS)
    proc = subprocess.Popen(P2PFLEET + ["seed", manifest, image, "--listen", f"127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if "ready after" in line:
            return proc, f"127.0.0.1:{port}"
    raise RuntimeError(f"seeder for {image} did not start")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def start_agent(work, name):
    root = os.path.join(work, name)
    os.mkdir(root)
    sock = os.path.join(root, "agent.sock")
    config = os.path.join(root, "agent.yml")
    with open(config, "w") as f:
        json.dump({"listen": f"127.0.0.1:{next(PORTS)}", "socket": sock, "state_dir": os.path.join(root, "state"),
                   "seed_after_fetch": False}, f)
    log = open(os.path.join(root, "agent.log"), "w")
    proc = subprocess.Popen(P2PFLEET + ["agent", "--config", config], stdout=log, stderr=subprocess.STDOUT)
    client = AgentClient(sock)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            client.info()
            return proc, client
        except AgentError:
            time.sleep(0.05)
    raise RuntimeError("agent did not start")


def wait_verified(client, job_ids, timeout=900):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = {j["id"]: j for j in client.jobs()}
        failed = [j for j in jobs.values() if j["state"] == "failed"]
        if failed:
            raise RuntimeError(failed[0]["error"])
        if all(jobs[i]["state"] == "verified" for i in job_ids):
            return
        time.sleep(0.1)
    raise RuntimeError("fetches not verified in time")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="2G")
    args = parser.parse_args()
    size = metainfo.parse_size(args.size)
    if os.geteuid() != 0:
        sys.exit("benchmark needs root for loop devices")
    work = tempfile.mkdtemp(prefix="p2pfleet-agent-bench-", dir="/var/tmp")
    loops, procs = [], []
    try:
        out = os.path.join(work, "manifests")
        os.mkdir(out)
        images, manifests = [], []
        for name in ("a", "b", "c"):
            image = os.path.join(work, name + ".img")
            make_image(image, size)
            manifest, _ = metainfo.create_manifest(image, out, name=name)
            images.append(image)
            manifests.append(manifest.path)
        sources = []
        for manifest, image in zip(manifests[1:], images[1:]):
            proc, endpoint = seeder(manifest, image)
            procs.append(proc)
            sources.append(endpoint)
        targets = [loop_device(os.path.join(work, f"target{i}.bin"), size) for i in range(3)]
        loops.extend(targets)

        # 1. One agent: seed a + fetch b and c at once.
        agent, client = start_agent(work, "three-jobs")
        procs.append(agent)
        cpu0, t0 = cpu_seconds(agent.pid), time.monotonic()
        client.put_seed(manifests[0], images[0])
        ids = [client.put_fetch(m, t, peers=[s])["job"]["id"] for m, t, s in zip(manifests[1:], targets, sources)]
        wait_verified(client, ids)
        wall = time.monotonic() - t0
        cpu = cpu_seconds(agent.pid) - cpu0
        rss = peak_rss_mib(agent.pid)
        agent.terminate()
        agent.wait(60)

        # 2. The same fetch (b, from the same seeder) through the CLI and through an agent,
        # alternating, so that neither always meets a warmer cache or a quieter machine.
        agent2, client2 = start_agent(work, "one-fetch")
        procs.append(agent2)
        t_cli, t_agent = [], []
        for round_ in range(ROUNDS):
            t = time.monotonic()
            subprocess.run(P2PFLEET + ["fetch", manifests[1], targets[2], "--peer", sources[0], "--listen",
                                       f"127.0.0.1:{next(PORTS)}", "--state-dir", os.path.join(work, f"cli{round_}"),
                                       "--no-local"],
                           check=True, capture_output=True)
            t_cli.append(time.monotonic() - t)
            t = time.monotonic()
            # Every byte over the wire: the target already holds the image from the round before.
            job = client2.put_fetch(manifests[1], targets[2], peers=[sources[0]], local_pieces=False)["job"]["id"]
            wait_verified(client2, [job])
            t_agent.append(time.monotonic() - t)
            client2.remove(job)  # forgets the resume data: the next round starts from zero
        t_cli, t_agent = sorted(t_cli)[ROUNDS // 2], sorted(t_agent)[ROUNDS // 2]

        print(f"\nimages {size / MIB:.0f} MiB each, {os.cpu_count()} cores, 127.0.0.1, loop-device targets\n")
        print(f"agent with 1 seed + 2 fetch jobs: {wall:.1f} s until both fetches verified, "
              f"peak RSS {rss:.0f} MiB, CPU {100 * cpu / wall:.0f} % of one core ({cpu:.1f} CPU-s)")
        print(f"fetch through the CLI:   {t_cli:6.2f} s  {size / MIB / t_cli:7.1f} MiB/s "
              f"(process start to verified; median of {ROUNDS})")
        print(f"fetch through the agent: {t_agent:6.2f} s  {size / MIB / t_agent:7.1f} MiB/s "
              f"(put to verified; median of {ROUNDS})")
        print(f"agent / CLI throughput: {t_cli / t_agent:.2f}")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
        for dev in loops:
            subprocess.run(["losetup", "-d", dev], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
