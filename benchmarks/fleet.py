#!/usr/bin/env python3
"""Fleet benchmark: a whole lab reimaged by HTTP fan-out and by the swarm, side by side.

On a virtual lab (network namespaces, every host link capped with tc, terminals in rooms
behind a router) it runs, for each terminal count N, in one run:

- **HTTP fan-out**: every terminal downloads the image at once from a real HTTP server on
  the server host (what a lab without P2P does);
- **P2P**: the product's own path: the tracker on the server, the server's agent seeding
  the image, every terminal's agent fetching it into its inactive slot (a real loop-device
  partition) and seeding on.

and prints the physical floor T_min (one terminal alone, measured: one HTTP download at
the same link rate), T_http, T_p2p, efficiency T_min / T_p2p, the speed-up over HTTP, how
many copies of the image the origin sent, ramp-up (until every terminal holds its first
piece), tail (from 90 % to 100 % of the fleet's bytes), how busy the terminals' uplinks
were, the bytes that crossed each room's uplink, and the machine's CPU.

The agents run from this checkout inside the hosts' network namespaces (same links, same
caps as the hosts' own processes), with their state on the controller: the benchmark needs
no install on the hosts and restarts them with the code under test every run.

With ``--delta PCT`` and/or ``--zeros PCT`` it measures delta transfer instead, for each
N, in one run: a full-image distribution into slot B (the inactive slot: the lab's hosts
run slot A), then release 2 (the same image with PCT % of its pieces rewritten) into slot B
again, where the agents keep what the slot's ledger vouches for; and an image that is PCT %
zero pieces against a random one of the same size. It
prints the fleet times side by side, their ratio, and the bytes that crossed the network
(the jobs' payload counters and the terminals' wire counters) against the changed bytes.

Needs root. ``--lab NAME`` reuses a lab that is already up (left up with ``--keep``).
"""
import random
import argparse
import concurrent.futures
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, os.path.join(ROOT, "plugins", "module_utils")]
# The lab's disks default to memory: the benchmark measures the network, not this
# machine's virtual disk (set P2PFLEET_LAB_DIR to put them elsewhere).
os.environ.setdefault("P2PFLEET_LAB_DIR", "/dev/shm/p2pfleet-bench-labs")

from _agent_client import AgentClient, AgentError  # noqa: E402
from bench_files import make_image  # noqa: E402
from machine import cpu_percent, cpu_ticks  # noqa: E402
from engine import metainfo  # noqa: E402
from lab import lab as labs  # noqa: E402
from lab import net as lab_net  # noqa: E402
from lab.sh import LabError  # noqa: E402

P2PFLEET = [sys.executable, os.path.join(ROOT, "bin", "p2pfleet")]
MIB = 1 << 20
AGENT_PORT = 6881
TRACKER_PORT = 6969
HTTP_PORT = 8080
POLL = 0.25
START_TIMEOUT = 30.0


class BenchError(Exception):
    """The benchmark cannot go on; the message says why."""


# -- processes inside the lab ---------------------------------------------------------
class Procs:
    """Processes started in the lab's namespaces; all stopped by ``close``."""

    def __init__(self, logdir):
        self.logdir, self.procs = logdir, []

    def start(self, netns, name, argv):
        log = open(os.path.join(self.logdir, name + ".log"), "ab")
        proc = subprocess.Popen(["ip", "netns", "exec", netns, *argv], stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT)
        log.close()
        self.procs.append((name, proc))
        return proc

    def stop(self, proc):
        proc.terminate()
        proc.wait(30)
        self.procs = [(name, p) for name, p in self.procs if p is not proc]

    def check(self):
        for name, proc in self.procs:
            if proc.poll() is not None:
                raise BenchError(f"{name} exited ({proc.returncode}); see {self.logdir}/{name}.log")

    def close(self):
        for _, proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for _, proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs = []


def in_netns(netns, *argv, timeout=60):
    return subprocess.run(["ip", "netns", "exec", netns, *argv], capture_output=True, text=True,
                          timeout=timeout, check=True).stdout


def counter(netns, dev, which):
    """Bytes ``dev`` in ``netns`` has sent (``tx``) or received (``rx``), headers included."""
    return int(in_netns(netns, "cat", f"/sys/class/net/{dev}/statistics/{which}_bytes"))


def wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchError(f"{what} within {timeout:.0f} s")
        time.sleep(0.1)


# -- the lab side ---------------------------------------------------------------------
class Fleet:
    """The lab's hosts as the benchmark uses them: addresses, namespaces, slots, agents."""

    def __init__(self, state, work, terminals):
        self.state, self.work = state, work
        hosts = state["hosts"]
        self.terminals = sorted(n for n, h in hosts.items() if h["role"] == "terminal")[:terminals]
        if len(self.terminals) < terminals:
            raise BenchError(f"lab {state['name']} has {len(self.terminals)} terminals; {terminals} asked for")
        self.server = hosts["server"]
        self.hosts = hosts
        self.procs = Procs(work)
        self.clients = {}
        self.manifest_dir = os.path.join(work, "manifests")
        os.makedirs(self.manifest_dir, exist_ok=True)

    def netns(self, name):
        return self.hosts[name]["netns"]

    def address(self, name):
        return self.hosts[name]["address"]

    def slot(self, name, label="system_b"):
        return self.hosts[name]["disk"][label]

    @property
    def announce(self):
        return f"http://{self.server['address']}:{TRACKER_PORT}/announce"

    def start_tracker(self, origin_fanout, other_group_peers):
        rooms = {}
        for name in self.terminals:
            rooms.setdefault(f"room{self.hosts[name]['room']}", []).append(name)
        config = {
            "listen": [f"0.0.0.0:{TRACKER_PORT}"],
            "allowed_networks": [self.state["network"]],
            "interval": 10, "min_interval": 3,          # the tracker role's defaults
            "manifest_dir": self.manifest_dir, "manifest_rescan": 1,
            "hosts": {h["address"]: n for n, h in self.hosts.items()},
            "groups": {room: {"hosts": names, "networks": [f"{self.address(n)}/32" for n in names]}
                       for room, names in rooms.items()},
            "policy": {"seeders": [self.server["address"]], "origin_fanout": origin_fanout,
                       "other_group_peers": other_group_peers},
            "log_level": "warning",
        }
        path = os.path.join(self.work, "tracker.yml")
        with open(path, "w") as f:
            json.dump(config, f)
        self.procs.start(self.server["netns"], "tracker", P2PFLEET + ["tracker", "--config", path])
        wait_until(lambda: self._tracker_answers(), START_TIMEOUT, "the tracker did not answer")

    def _tracker_answers(self):
        self.procs.check()
        proc = subprocess.run(["ip", "netns", "exec", self.server["netns"], "curl", "-sf", "-o", "/dev/null",
                               f"http://127.0.0.1:{TRACKER_PORT}/status.json"], capture_output=True)
        return proc.returncode == 0

    def tracker_status(self, info_hash):
        """The tracker's status of one swarm, or None while it does not know the image."""
        proc = subprocess.run(["ip", "netns", "exec", self.server["netns"], "curl", "-sf",
                               f"http://127.0.0.1:{TRACKER_PORT}/status/{info_hash}.json"],
                              capture_output=True, text=True, timeout=30)
        return json.loads(proc.stdout) if proc.returncode == 0 else None

    def start_agents(self):
        for name in ["server"] + self.terminals:
            home = os.path.join(self.work, "agents", name)
            os.makedirs(home, exist_ok=True)
            config = {"listen": f"{self.address(name)}:{AGENT_PORT}", "socket": os.path.join(home, "agent.sock"),
                      "state_dir": os.path.join(home, "state"), "trackers": [self.announce], "host_name": name,
                      "allowed_networks": [self.state["network"]], "log_level": "warning"}
            path = os.path.join(home, "agent.yml")
            with open(path, "w") as f:
                json.dump(config, f)
            self.procs.start(self.netns(name), f"agent-{name}", P2PFLEET + ["agent", "--config", path])
            self.clients[name] = AgentClient(config["socket"], timeout=60, start_wait=START_TIMEOUT)
        for name, client in self.clients.items():
            try:
                client.info()
            except AgentError as exc:
                self.procs.check()
                raise BenchError(f"the agent of {name} did not start: {exc}") from None

    def close(self):
        self.procs.close()


# -- one HTTP fan-out -------------------------------------------------------------------
def http_fanout(fleet, image, terminals):
    """Seconds until every terminal has the whole file from the server's HTTP server."""
    size = os.path.getsize(image)
    url = f"http://{fleet.server['address']}:{HTTP_PORT}/{os.path.basename(image)}"
    started = time.monotonic()
    procs = [subprocess.Popen(["ip", "netns", "exec", fleet.netns(t), "curl", "-sf", "-o", "/dev/null",
                               "-w", "%{size_download}", url], stdout=subprocess.PIPE, text=True)
             for t in terminals]
    for t, proc in zip(terminals, procs):
        out, _ = proc.communicate(timeout=86400)
        if proc.returncode != 0 or int(out or 0) != size:
            raise BenchError(f"HTTP download on {t} failed (curl {proc.returncode}, {out or 0} of {size} bytes)")
    return time.monotonic() - started


# -- one P2P distribution ---------------------------------------------------------------
class Distribution:
    """One image distributed by the swarm to ``terminals``; its measurements."""

    def __init__(self, fleet, manifest, image, terminals, timeout, super_seeding=False, slot="system_b"):
        self.super_seeding = super_seeding
        self.slot = slot
        self.fleet, self.manifest, self.image, self.terminals = fleet, manifest, image, terminals
        self.timeout = timeout
        self.first, self.downloaded, self.verified = {}, {}, {}
        self.samples = []         # (seconds, bytes held by the whole fleet)
        self.jobs = {}
        self.origin_peers = 0     # most peers the origin was connected to at once

    def run(self):
        fleet, server = self.fleet, self.fleet.clients["server"]
        wait_until(lambda: fleet.tracker_status(self.manifest.info_hash), 30,
                   "the tracker did not pick up the manifest from its manifest_dir")
        seed = server.put_seed(self.manifest.path, self.image, trackers=[],
                               super_seeding=self.super_seeding)["job"]
        self.jobs["server"] = seed["id"]
        wait_until(lambda: self._state("server") == "seeding", 120, "the server did not start seeding")
        wait_until(self._origin_announced, 60, "the tracker did not see the origin seeder")
        core = fleet.state["hosts"]["server"]["netns"]
        counters = self._uplink_counters()
        wire_rx = {t: counter(fleet.netns(t), "eth0", "rx") for t in self.terminals}
        origin_wire = counter(core, "eth0", "tx")
        cpu = cpu_ticks()
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(len(self.terminals)) as pool:
            answers = pool.map(lambda t: fleet.clients[t].put_fetch(
                self.manifest.path, fleet.slot(t, self.slot), trackers=[], require_device=True, seed_after=True),
                self.terminals)
            for t, answer in zip(self.terminals, answers):
                self.jobs[t] = answer["job"]["id"]
        total = self.manifest.image_size * len(self.terminals)
        while len(self.verified) < len(self.terminals):
            now = time.monotonic() - started
            held = 0
            for t in self.terminals:
                job = fleet.clients[t].job(self.jobs[t])
                if job is None or job["state"] in ("failed", "stopped"):
                    raise BenchError(f"the fetch on {t} ended {job and job['state']}: {job and job['error']}")
                done = job["bytes_done"]
                if job["state"] in ("verified", "seeding"):
                    done = self.manifest.image_size     # whole, whatever a re-added torrent reports
                held += done
                if done > 0:
                    self.first.setdefault(t, now)
                if done >= job["bytes_total"]:
                    self.downloaded.setdefault(t, now)
                if job["state"] in ("verified", "seeding"):
                    self.verified.setdefault(t, now)
                    self.downloaded.setdefault(t, now)
            self.samples.append((now, held))
            self.origin_peers = max(self.origin_peers, server.job(self.jobs["server"])["peers"])
            if now > self.timeout:
                late = sorted(set(self.terminals) - set(self.verified))
                raise BenchError(f"the fleet did not finish within {self.timeout:.0f} s: {', '.join(late)} "
                                 f"not verified; the fleet held {held / total:.0%} of its bytes")
            time.sleep(POLL)
        self.cpu = cpu_percent(cpu, cpu_ticks())
        self.origin_payload = server.job(self.jobs["server"])["uploaded"]
        self.origin_wire = counter(core, "eth0", "tx") - origin_wire
        self.uplinks = {room: self._uplink_bytes(room) - before for room, before in counters.items()}
        finished = {t: fleet.clients[t].job(self.jobs[t]) for t in self.terminals}
        self.uploads = {t: job["uploaded"] for t, job in finished.items()}
        self.fetched = {t: job["downloaded"] for t, job in finished.items()}
        self.local = {t: job["local_bytes"] for t, job in finished.items()}
        self.rejected = sum(job["rejected_pieces"] for job in finished.values())
        self.wire_rx = {t: counter(fleet.netns(t), "eth0", "rx") - wire_rx[t] for t in self.terminals}
        return self

    def _state(self, name):
        job = self.fleet.clients[name].job(self.jobs[name])
        if job["state"] in ("failed", "stopped"):
            raise BenchError(f"the seed on {name} ended {job['state']}: {job['error']}")
        return job["state"]

    def _origin_announced(self):
        status = self.fleet.tracker_status(self.manifest.info_hash) or {}
        return any(p["origin"] and p["state"] == "seeding" for p in status.get("peers", ()))

    def _uplink_counters(self):
        rooms = sorted({self.fleet.hosts[t]["room"] for t in self.terminals})
        return {room: self._uplink_bytes(room) for room in rooms} if len(rooms) > 1 else {}

    def _uplink_bytes(self, room):
        return counter(f"{self.fleet.state['prefix']}-router", f"room{room}", "tx")

    def cleanup(self):
        for name, job_id in self.jobs.items():
            try:
                self.fleet.clients[name].remove(job_id)
            except AgentError as exc:
                print(f"warning: removing the job on {name}: {exc}", file=sys.stderr)

    # -- results
    @property
    def t_fleet(self):
        return max(self.downloaded.values())

    @property
    def t_verified(self):
        return max(self.verified.values())

    @property
    def ramp_up(self):
        return max(self.first.values())

    @property
    def tail(self):
        total = self.manifest.image_size * len(self.terminals)
        t90 = next((t for t, held in self.samples if held >= 0.9 * total), self.t_fleet)
        return self.t_fleet - t90

    def uplink_use(self, rate_bytes):
        """Terminals' upload as a share of what their links could have sent meanwhile."""
        return sum(self.uploads.values()) / (len(self.terminals) * rate_bytes * self.t_fleet)


# -- the run ----------------------------------------------------------------------------
def parse_counts(text):
    try:
        counts = sorted({int(x) for x in text.split(",")})
    except ValueError:
        counts = []
    if not counts or counts[0] < 1:
        raise SystemExit(f"--terminals {text!r}: a comma-separated list of terminal counts, e.g. 4,8,16")
    return counts


def slot_size_for(size):
    """The lab's slot size: 1 GiB, or the image rounded up to whole GiB."""
    return f"{max(1, -(-size // (1 << 30)))}G"


def check_memory(size, terminals, http_size):
    """Refuse early when the lab's disks and images (in memory by default) cannot fit."""
    if not os.environ["P2PFLEET_LAB_DIR"].startswith("/dev/shm"):
        return
    need = terminals * (size + 320 * MIB) + 2 * size + http_size + 2 * (1 << 30)
    with open("/proc/meminfo") as f:
        avail = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    if need > avail:
        raise SystemExit(f"this run needs about {need >> 30} GiB of memory for the lab's disks and images, "
                         f"{avail >> 30} GiB are available: fewer terminals, a smaller --size, or "
                         f"P2PFLEET_LAB_DIR on a disk")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--terminals", default="4,8", help="terminal counts to run, e.g. 4,8,16 (default 4,8)")
    parser.add_argument("--size", default="256M", help="image size (default 256M)")
    parser.add_argument("--rate", default="50mbit", help="every host link's rate (default 50mbit)")
    parser.add_argument("--rooms", type=int, default=1, help="rooms the terminals are split into (default 1)")
    parser.add_argument("--uplink", default="none", help="each room's uplink rate (default none: uncapped)")
    parser.add_argument("--http-size", default=None,
                        help="bytes each HTTP fan-out moves (default: the image size); the fan-out's time "
                             "scales with its bytes, so a smaller sample is scaled up and marked as such")
    parser.add_argument("--piece-size", default=None, help="the manifest's piece size (default: the policy's)")
    parser.add_argument("--origin-fanout", type=int, default=4, help="tracker policy origin_fanout (default 4)")
    parser.add_argument("--other-group-peers", type=int, default=4,
                        help="tracker policy other_group_peers: peers from other rooms each peer is told about "
                             "(default 4, the tracker's)")
    parser.add_argument("--super-seeding", action="store_true", help="the origin seeds in super-seeding mode")
    parser.add_argument("--no-http", action="store_true", help="skip the HTTP fan-outs (T_min still measured)")
    parser.add_argument("--delta", type=float, default=None, metavar="PCT",
                        help="measure delta transfer: release 2 with PCT %% of its pieces changed, into the slot "
                             "that holds the full image, against the full image (replaces the HTTP/P2P comparison)")
    parser.add_argument("--zeros", type=float, default=None, metavar="PCT",
                        help="measure an image of PCT %% zero pieces against a random one (with or without --delta)")
    parser.add_argument("--lab", default="fleetbench", help="lab name; a lab already up is reused and kept")
    parser.add_argument("--keep", action="store_true", help="leave the lab up afterwards")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("the fleet benchmark needs root (a virtual lab)")
    counts = parse_counts(args.terminals)
    size = metainfo.parse_size(args.size)
    http_size = metainfo.parse_size(args.http_size) if args.http_size else size
    if http_size > size:
        sys.exit("--http-size cannot be larger than --size")
    piece_size = metainfo.parse_size(args.piece_size) if args.piece_size else None
    rate_bits = lab_net.parse_rate(args.rate)
    if rate_bits is None:
        sys.exit("--rate must be a rate (the benchmark compares against the link rate)")
    if args.rooms > 1 and args.rooms > counts[0]:
        sys.exit("--rooms cannot exceed the smallest terminal count")

    reused = os.path.isdir(labs.lab_dir(args.lab))
    if reused:
        state = labs.load(args.lab)
        if not labs.is_up(state):
            sys.exit(f"lab {args.lab} has a directory but no network: lab down --lab {args.lab}")
        print(f"reusing lab {args.lab} ({len(state['hosts']) - 1} terminals, rate {state['rate']}, "
              f"{state['rooms']} room(s)); --rate/--rooms/--uplink are the lab's", flush=True)
        rate_bits = state["rate"]
    else:
        check_memory(size, counts[-1], http_size)
        state = labs.up(args.lab, terminals=counts[-1], rooms=args.rooms, rate=args.rate, uplink=args.uplink,
                        slot_size=slot_size_for(size))
    if state["slot_size"] < size:
        sys.exit(f"the lab's slots ({state['slot_size'] >> 20} MiB) are smaller than the image")
    # Inside the lab's directory: whatever a failed run leaves goes with the lab.
    work = tempfile.mkdtemp(prefix="fleet-", dir=state["dir"])
    fleet = Fleet(state, work, counts[-1])
    rate_bytes = rate_bits / 8
    try:
        if args.delta is not None or args.zeros is not None:
            report_delta(run_delta(fleet, args, counts, size, piece_size), args, state, size, rate_bits)
        else:
            results = run(fleet, args, counts, size, http_size, piece_size, rate_bytes)
            report(results, args, state, size, http_size, rate_bits)
    except (BenchError, LabError) as exc:
        hint = f"logs in {work}" if args.keep else "run again with --keep to keep the logs and the lab"
        sys.exit(f"fleet benchmark: {exc} ({hint})")
    finally:
        fleet.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        if not (reused or args.keep):
            labs.down(args.lab)


def run(fleet, args, counts, size, http_size, piece_size, rate_bytes):
    results = {"counts": counts}
    http_image = os.path.join(fleet.work, "http.img")
    make_image(http_image, http_size)
    server = fleet.procs.start(fleet.server["netns"], "http", [sys.executable, "-m", "http.server", "-b", "0.0.0.0",
                                                              "-d", fleet.work, str(HTTP_PORT)])
    wait_until(lambda: subprocess.run(["ip", "netns", "exec", fleet.server["netns"], "curl", "-sf", "-o",
                                       "/dev/null", f"http://127.0.0.1:{HTTP_PORT}/http.img", "-r", "0-0"],
                                      capture_output=True).returncode == 0, START_TIMEOUT,
               "the HTTP server did not answer")
    scale = size / http_size
    one = http_fanout(fleet, http_image, fleet.terminals[:1])
    results["t_min"] = one * scale
    results["goodput"] = http_size / one
    print(f"T_min: one terminal alone over HTTP: {one:.1f} s for {http_size / MIB:.0f} MiB "
          f"({http_size * 8 / one / 1e6:.1f} Mbit/s goodput)", flush=True)
    results["http"] = {}
    if not args.no_http:
        for n in counts:
            seconds = http_fanout(fleet, http_image, fleet.terminals[:n])
            results["http"][n] = seconds * scale
            print(f"HTTP fan-out to {n}: {seconds:.1f} s for {http_size / MIB:.0f} MiB", flush=True)
    fleet.procs.stop(server)
    os.unlink(http_image)

    fleet.start_tracker(args.origin_fanout, args.other_group_peers)
    fleet.start_agents()
    results["p2p"] = {}
    for n in counts:
        image = os.path.join(fleet.work, f"image-{n}.img")
        make_image(image, size)
        manifest, _ = metainfo.create_manifest(image, fleet.manifest_dir, name=f"fleet-{n}", piece_size=piece_size)
        fleet.procs.check()
        dist = Distribution(fleet, manifest, image, fleet.terminals[:n], timeout=max(120.0, 20 * results["t_min"]),
                            super_seeding=args.super_seeding)
        try:
            dist.run()
        finally:
            dist.cleanup()
        os.unlink(image)
        results["p2p"][n] = dist
        results["piece_size"], results["pieces"] = manifest.piece_size, manifest.piece_count
        print(f"P2P to {n}: {dist.t_fleet:.1f} s (all verified at {dist.t_verified:.1f} s), origin sent "
              f"{dist.origin_payload / size:.2f} copies", flush=True)
    return results


def changed_copy(source, path, fraction, piece_size, seed):
    """``path``: ``source`` with ``fraction`` of its pieces rewritten; returns the pieces changed."""
    shutil.copyfile(source, path)
    count = -(-os.path.getsize(source) // piece_size)
    changed = sorted(random.Random(seed).sample(range(count), max(1, round(count * fraction))))
    with open(path, "r+b") as f:
        for index in changed:
            f.seek(index * piece_size)
            f.write(os.urandom(min(piece_size, os.path.getsize(source) - index * piece_size)))
    return changed


def zero_image(path, size, fraction, piece_size, seed):
    """An image whose pieces are zeros but for a random ``1 - fraction`` of them."""
    count = -(-size // piece_size)
    data = set(random.Random(seed).sample(range(count), count - round(count * fraction)))
    with open(path, "wb") as f:
        f.truncate(size)
        for index in sorted(data):
            f.seek(index * piece_size)
            f.write(os.urandom(min(piece_size, size - index * piece_size)))


def distribute(fleet, manifest, image, terminals, timeout, slot):
    dist = Distribution(fleet, manifest, image, terminals, timeout=timeout, slot=slot)
    try:
        dist.run()
    finally:
        dist.cleanup()
    return dist


def run_delta(fleet, args, counts, size, piece_size):
    """Full image vs. release 2 with --delta % changed pieces; random vs. --zeros % zero image."""
    fleet.start_tracker(args.origin_fanout, args.other_group_peers)
    fleet.start_agents()
    timeout = max(300.0, 40 * size / (lab_net.parse_rate(args.rate) or 1) * 8)
    results = {"counts": counts, "delta": {}, "zeros": {}}
    for n in counts:
        terminals = fleet.terminals[:n]
        full_image = os.path.join(fleet.work, f"full-{n}.img")
        make_image(full_image, size)
        full, _ = metainfo.create_manifest(full_image, fleet.manifest_dir, name=f"full-{n}", piece_size=piece_size)
        full_run = distribute(fleet, full, full_image, terminals, timeout, "system_b")
        print(f"N={n}: full image into slot B: {full_run.t_fleet:.1f} s", flush=True)
        entry = {"full": full_run}
        if args.delta is not None:
            release2 = os.path.join(fleet.work, f"release2-{n}.img")
            changed = changed_copy(full_image, release2, args.delta / 100, full.piece_size, seed=n)
            second, _ = metainfo.create_manifest(release2, fleet.manifest_dir, name=f"release2-{n}",
                                                 piece_size=full.piece_size)
            entry["changed_bytes"] = len(changed) * full.piece_size
            entry["delta"] = distribute(fleet, second, release2, terminals, timeout, "system_b")
            os.unlink(release2)
            print(f"N={n}: release 2 ({args.delta:g} % of pieces changed) into slot B again: "
                  f"{entry['delta'].t_fleet:.1f} s", flush=True)
        os.unlink(full_image)
        if args.zeros is not None:
            zeros_image = os.path.join(fleet.work, f"zeros-{n}.img")
            zero_image(zeros_image, size, args.zeros / 100, full.piece_size, seed=n)
            zeros, _ = metainfo.create_manifest(zeros_image, fleet.manifest_dir, name=f"zeros-{n}",
                                                piece_size=full.piece_size)
            entry["zero_bytes"] = zeros.zero_bytes
            # Into slot B, which holds random bytes (release 2's or the full image's): nothing matches.
            entry["zeros"] = distribute(fleet, zeros, zeros_image, terminals, timeout, "system_b")
            os.unlink(zeros_image)
            print(f"N={n}: image with {args.zeros:g} % zero pieces into slot B: {entry['zeros'].t_fleet:.1f} s",
                  flush=True)
        results["delta"][n] = entry
        results["piece_size"], results["pieces"] = full.piece_size, full.piece_count
    return results


def report_delta(results, args, state, size, rate_bits):
    print(f"\ndelta benchmark: image {size / MIB:.0f} MiB in {results['pieces']} pieces of "
          f"{results['piece_size'] // 1024} KiB; links {rate_bits / 1e6:g} Mbit/s; {state['rooms']} room(s); "
          f"{os.cpu_count()} cores\n")
    counts = results["counts"]
    if args.delta is not None:
        print(f"release 2 = the full image with {args.delta:g} % of its pieces changed, into the slot that holds "
              "the full image (release N-1 in the inactive slot):")
        print(f"{'N':>3} {'T_full':>8} {'T_delta':>8} {'ratio':>6} {'changed':>9} {'fetched':>9} "
              f"{'/(chg*N)':>9} {'wire rx':>9} {'local/term':>11} {'rejected':>8}")
        for n in counts:
            e = results["delta"][n]
            full, delta = e["full"], e["delta"]
            fetched = sum(delta.fetched.values())
            print(f"{n:>3} {full.t_fleet:7.1f}s {delta.t_fleet:7.1f}s {delta.t_fleet / full.t_fleet:6.2f} "
                  f"{e['changed_bytes'] / MIB:8.1f}M {fetched / MIB:8.1f}M {fetched / (e['changed_bytes'] * n):9.2f} "
                  f"{sum(delta.wire_rx.values()) / MIB:8.1f}M {sum(delta.local.values()) / n / MIB:10.1f}M "
                  f"{delta.rejected:8d}")
    if args.zeros is not None:
        print(f"\nan image of {args.zeros:g} % zero pieces against a random image of the same size (full fetch):")
        print(f"{'N':>3} {'T_random':>9} {'T_zeros':>8} {'ratio':>6} {'zero/term':>10} {'fetched':>9} "
              f"{'data*N':>9}")
        for n in counts:
            e = results["delta"][n]
            full, zeros = e["full"], e["zeros"]
            fetched = sum(zeros.fetched.values())
            print(f"{n:>3} {full.t_fleet:8.1f}s {zeros.t_fleet:7.1f}s {zeros.t_fleet / full.t_fleet:6.2f} "
                  f"{sum(zeros.local.values()) / n / MIB:9.1f}M {fetched / MIB:8.1f}M "
                  f"{(size - e['zero_bytes']) * n / MIB:8.1f}M")
    print("\nT_full / T_random = the full random image into fresh slots; ratio = the second fleet time / the "
          "first;\nfetched = payload the terminals received from the swarm (all of them); /(chg*N) = fetched / "
          "(changed bytes × N);\nwire rx = bytes the terminals' links received, headers included; local/term = "
          "bytes each terminal took\nfrom its own disks; rejected = local pieces that failed their check.")


def report(results, args, state, size, http_size, rate_bits):
    t_min, counts = results["t_min"], results["counts"]
    piece = results["piece_size"]
    print(f"\nfleet benchmark: image {size / MIB:.0f} MiB in {results['pieces']} pieces of "
          f"{piece // 1024} KiB; links {rate_bits / 1e6:g} Mbit/s (goodput {results['goodput'] * 8 / 1e6:.1f}); "
          f"{state['rooms']} room(s), uplink {state['uplink'] / 1e6 if state['uplink'] else 'uncapped'}"
          f"{' Mbit/s' if state['uplink'] else ''}; origin_fanout {args.origin_fanout}, other_group_peers {args.other_group_peers}; "
          f"{os.cpu_count()} cores")
    scaled = f" (HTTP measured on {http_size / MIB:.0f} MiB, scaled ×{size / http_size:g})" if http_size != size else ""
    print(f"T_min = one terminal alone = {t_min:.1f} s{scaled}\n")
    header = (f"{'N':>3} {'T_http':>8} {'T_p2p':>7} {'eff':>5} {'speed-up':>9} {'/N':>5} {'origin':>7} "
              f"{'o.peers':>7} {'ramp-up':>8} {'tail':>6} {'upl use':>8} {'verified':>9} {'CPU':>5}")
    print(header)
    for n in counts:
        d = results["p2p"][n]
        t_http = results["http"].get(n)
        speed = f"{t_http / d.t_fleet:8.1f}x" if t_http else f"{'-':>9}"
        per_n = f"{t_http / d.t_fleet / n:5.2f}" if t_http else f"{'-':>5}"
        http = f"{t_http:7.1f}s" if t_http else f"{'-':>8}"
        print(f"{n:>3} {http} {d.t_fleet:6.1f}s {t_min / d.t_fleet:5.2f} {speed} {per_n} "
              f"{d.origin_payload / size:6.2f}x {d.origin_peers:7d} {d.ramp_up:7.1f}s {d.tail:5.1f}s "
              f"{100 * d.uplink_use(results['goodput']):7.0f}% {d.t_verified:8.1f}s {d.cpu:4.0f}%")
    if len(counts) > 1:
        first, last = results["p2p"][counts[0]], results["p2p"][counts[-1]]
        print(f"\nfleet time N={counts[-1]} / N={counts[0]}: {last.t_fleet / first.t_fleet:.2f}")
    for n in counts:
        d = results["p2p"][n]
        if d.uplinks:
            print(f"N={n}: copies of the image into each room (wire bytes, headers included): " +
                  ", ".join(f"room{room} {b / size:.2f}" for room, b in sorted(d.uplinks.items())))
    print("\neff = T_min / T_p2p (1.0 = the whole lab in the time one terminal takes alone); speed-up = T_http / "
          "T_p2p;\norigin = payload the server's agent uploaded, in copies of the image; ramp-up = until every "
          "terminal held a piece;\ntail = 90 % to 100 % of the fleet's bytes; upl use = terminals' upload / what "
          "their links could carry in T_p2p;\nverified = until every terminal verified its whole slot; CPU = "
          "this machine, all cores.")


if __name__ == "__main__":
    main()
