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
the same link rate) and the bound the caps set, T_bound = max(F/U_server, F/D_terminal,
F/U_uplink), T_http, T_p2p, efficiency T_min / T_p2p and T_bound / T_p2p, the speed-up over
HTTP, how many copies of the image the origin sent, ramp-up (until every terminal holds its
first piece), tail (from 90 % to 100 % of the fleet's bytes), how busy the terminals' uplinks
were, the bytes that crossed each room's uplink, the terminals that got their first piece
and finished last, and the machine's CPU with the share of it the lab's processes took.
``--json FILE`` writes the same, one object per N.

``--light`` runs on a light lab (bare network namespaces, docs/lab.md), so that 40-64
terminals fit a 2-core machine. ``--origin-leaves COPIES`` stops the origin once it has sent
that many copies and reports whether the fleet still completes or stalls.

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
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]  # the lab's package; helpers.collection
# The lab's disks default to memory: the benchmark measures the network, not this
# machine's virtual disk (set P2PFLEET_LAB_DIR to put them elsewhere).
os.environ.setdefault("P2PFLEET_LAB_DIR", "/dev/shm/p2pfleet-bench-labs")

from helpers.collection import importable  # noqa: E402

importable()
from ansible_collections.p2pfleet.imaging.plugins.module_utils._agent_client import AgentClient, AgentError  # noqa: E402
from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine import metainfo  # noqa: E402
from bench_files import make_image  # noqa: E402
from machine import cpu_percent, cpu_ticks, memory_available, process_ticks  # noqa: E402
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
# A Python agent takes about a CPU-second to start: 41 of them on 2 cores, beside a running
# lab, take tens of seconds, so the wait for the agents grows with their number.
START_PER_AGENT = 2.0
STALL_TIMEOUT = 60.0
AGENT_MEMORY = 100 * MIB          # an agent's resident memory, with libtorrent's buffers, at most


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

    def pids(self):
        """The processes' pids: ``ip netns exec`` execs the command, so they are the agents' own."""
        return [proc.pid for _, proc in self.procs if proc.poll() is None]

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

    def start_tracker(self, origin_fanout, other_group_peers, bridges=None, stripes=None):
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
        if bridges is not None:         # only when asked: a tracker without the key keeps its default
            config["policy"]["bridges"] = bridges
        if stripes is not None:
            config["policy"]["stripes"] = stripes
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
        start_wait = START_TIMEOUT + START_PER_AGENT * (1 + len(self.terminals))
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
            self.clients[name] = AgentClient(config["socket"], timeout=60, start_wait=start_wait)
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

    def __init__(self, fleet, manifest, image, terminals, timeout, super_seeding=False, slot="system_b",
                 origin_leaves=None, stall_timeout=STALL_TIMEOUT):
        self.super_seeding = super_seeding
        self.slot = slot
        self.fleet, self.manifest, self.image, self.terminals = fleet, manifest, image, terminals
        self.timeout = timeout
        self.first, self.downloaded, self.verified = {}, {}, {}
        self.samples = []         # (seconds, bytes held by the whole fleet)
        self.jobs = {}
        self.origin_peers = 0     # most peers the origin was connected to at once
        self.origin_payload = 0
        # --origin-leaves: the origin's seed job is stopped once it has uploaded this many copies
        self.origin_leaves, self.stall_timeout = origin_leaves, stall_timeout
        self.origin_left = None   # (seconds, copies uploaded) when it was stopped
        self.stalled = None       # what was missing when the fleet stopped making progress without it

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
        cpu, lab_cpu = cpu_ticks(), process_ticks(fleet.procs.pids())
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(len(self.terminals)) as pool:
            answers = pool.map(lambda t: fleet.clients[t].put_fetch(
                self.manifest.path, fleet.slot(t, self.slot), trackers=[], require_device=True, seed_after=True),
                self.terminals)
            for t, answer in zip(self.terminals, answers):
                self.jobs[t] = answer["job"]["id"]
        size = self.manifest.image_size
        total = size * len(self.terminals)
        progress = (0, 0.0)       # (bytes the fleet held, when that last changed)
        while len(self.verified) < len(self.terminals):
            held = 0
            for t in self.terminals:
                job = fleet.clients[t].job(self.jobs[t])
                now = time.monotonic() - started            # per terminal: 40 answers take a while
                if job is None or job["state"] in ("failed", "stopped"):
                    raise BenchError(f"the fetch on {t} ended {job and job['state']}: {job and job['error']}")
                done = job["bytes_done"]
                if job["state"] in ("verified", "seeding"):
                    done = size     # whole, whatever a re-added torrent reports
                held += done
                if done > 0:
                    self.first.setdefault(t, now)
                if done >= job["bytes_total"]:
                    self.downloaded.setdefault(t, now)
                if job["state"] in ("verified", "seeding"):
                    self.verified.setdefault(t, now)
                    self.downloaded.setdefault(t, now)
            now = time.monotonic() - started
            self.samples.append((now, held))
            if held != progress[0]:
                progress = (held, now)
            origin = server.job(self.jobs["server"])
            self.origin_peers = max(self.origin_peers, origin["peers"])
            self.origin_payload = max(self.origin_payload, origin["uploaded"])
            if self.origin_leaves and self.origin_left is None and origin["uploaded"] >= self.origin_leaves * size:
                server.stop(self.jobs["server"])
                self.origin_left = (now, origin["uploaded"] / size)
            if self.origin_left and now - progress[1] > self.stall_timeout:
                late = [t for t in self.terminals if t not in self.downloaded]
                self.stalled = {"at": round(progress[1], 1), "terminals": late, "missing": 1 - held / total}
                break
            if now > self.timeout:
                late = sorted(set(self.terminals) - set(self.verified))
                raise BenchError(f"the fleet did not finish within {self.timeout:.0f} s: {', '.join(late)} "
                                 f"not verified; the fleet held {held / total:.0%} of its bytes")
            time.sleep(POLL)
        self.cpu = cpu_percent(cpu, cpu_ticks())
        self.lab_cpu = cpu_percent(lab_cpu, process_ticks(fleet.procs.pids()))
        self.origin_payload = max(self.origin_payload, server.job(self.jobs["server"])["uploaded"])
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

    # -- results (None: a fleet that stalled never got there)
    @property
    def t_fleet(self):
        return None if self.stalled else max(self.downloaded.values())

    @property
    def t_verified(self):
        return None if self.stalled else max(self.verified.values())

    @property
    def ramp_up(self):
        return max(self.first.values()) if len(self.first) == len(self.terminals) else None

    @property
    def tail(self):
        if self.stalled:
            return None
        total = self.manifest.image_size * len(self.terminals)
        t90 = next((t for t, held in self.samples if held >= 0.9 * total), self.t_fleet)
        return self.t_fleet - t90

    def uplink_use(self, rate_bytes):
        """Terminals' upload as a share of what their links could have sent meanwhile."""
        if self.stalled:
            return None
        return sum(self.uploads.values()) / (len(self.terminals) * rate_bytes * self.t_fleet)

    def latest(self, times, count=3):
        """The ``count`` terminals that came last in ``times`` (first piece, or done), latest
        first; a terminal that never got there is ``None``."""
        order = sorted(self.terminals, key=lambda t: (t in times, -times.get(t, 0.0)))
        return [(t, times.get(t)) for t in order[:count]]


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


def check_memory(size, terminals, http_size, light=False):
    """Refuse early when the lab's disks, images and agents cannot fit in memory.

    Per terminal: the image in its slot (in memory by default) and its agent; a full lab's
    terminal also holds release 1 in slot A and runs a container.
    """
    per_terminal = AGENT_MEMORY + (0 if light else 320 * MIB)
    if os.environ["P2PFLEET_LAB_DIR"].startswith("/dev/shm"):
        per_terminal += size
    need = terminals * per_terminal + 2 * size + http_size + (1 << 30)
    avail = memory_available()
    if need > avail:
        raise SystemExit(f"this run needs about {need / (1 << 30):.1f} GiB of memory for the lab's disks, images "
                         f"and agents, {avail / (1 << 30):.1f} GiB are available: fewer terminals, a smaller "
                         f"--size, or P2PFLEET_LAB_DIR on a disk")


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
    parser.add_argument("--bridges", type=int, default=None, metavar="N",
                        help="tracker policy bridges: peers per room told about the origin and the other rooms "
                             "(default: not set, the tracker's default)")
    parser.add_argument("--stripes", choices=("on", "off"), default=None,
                        help="tracker policy stripes: hand each origin downloader its share of the pieces "
                             "(default: not set, the tracker's default)")
    parser.add_argument("--origin-leaves", type=float, default=None, metavar="COPIES",
                        help="stop the origin's seed job once it has uploaded COPIES x the image (e.g. 1.05), and "
                             "report whether the fleet still completes or stalls")
    parser.add_argument("--stall-timeout", type=float, default=STALL_TIMEOUT, metavar="S",
                        help=f"with --origin-leaves: the fleet has stalled after S s without progress "
                             f"(default {STALL_TIMEOUT:g})")
    parser.add_argument("--light", action="store_true",
                        help="a light lab (hosts as bare network namespaces: same network, caps and disks), so "
                             "that 40-64 terminals fit this machine; ignored when --lab names a lab that is up")
    parser.add_argument("--json", default=None, metavar="FILE",
                        help="also write the results to FILE: a JSON list, one object per N with every column")
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
    if args.origin_leaves is not None and args.origin_leaves <= 0:
        sys.exit("--origin-leaves must be a number of copies above 0, e.g. 1.05")
    if args.bridges is not None and args.bridges < 0:
        sys.exit("--bridges must be 0 or more")
    # A terminated run must still take its lab down: let SIGTERM unwind like ^C.
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    reused = os.path.isdir(labs.lab_dir(args.lab))
    if reused:
        state = labs.load(args.lab)
        if not labs.is_up(state):
            sys.exit(f"lab {args.lab} has a directory but no network: lab down --lab {args.lab}")
        print(f"reusing lab {args.lab} ({len(state['hosts']) - 1} terminals, rate {state['rate']}, "
              f"{state['rooms']} room(s){', light' if state.get('light') else ''}); "
              f"--rate/--rooms/--uplink/--light are the lab's", flush=True)
        rate_bits = state["rate"]
        if rate_bits is None:
            sys.exit(f"lab {args.lab} has uncapped links: the benchmark compares against the link rate")
    else:
        check_memory(size, counts[-1], http_size, args.light)
        state = labs.up(args.lab, terminals=counts[-1], rooms=args.rooms, rate=args.rate, uplink=args.uplink,
                        slot_size=slot_size_for(size), light=args.light)
    work = fleet = None
    try:
        if state["slot_size"] < size:
            raise BenchError(f"the lab's slots ({state['slot_size'] >> 20} MiB) are smaller than the image")
        # Inside the lab's directory: whatever a failed run leaves goes with the lab.
        work = tempfile.mkdtemp(prefix="fleet-", dir=state["dir"])
        fleet = Fleet(state, work, counts[-1])
        if args.delta is not None or args.zeros is not None:
            report_delta(run_delta(fleet, args, counts, size, piece_size), args, state, size, rate_bits)
        else:
            results = run(fleet, args, counts, size, http_size, piece_size, rate_bits / 8)
            rows = report(results, args, state, size, http_size, rate_bits)
            if args.json:
                with open(args.json, "w") as f:
                    json.dump(rows, f, indent=1)
                print(f"\nresults written to {args.json}")
    except (BenchError, LabError) as exc:
        hint = f"logs in {work}" if args.keep else "run again with --keep to keep the logs and the lab"
        sys.exit(f"fleet benchmark: {exc} ({hint})")
    except KeyboardInterrupt:
        sys.exit("fleet benchmark: interrupted")
    finally:
        if fleet:
            fleet.close()
        if work and not args.keep:
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

    fleet.start_tracker(args.origin_fanout, args.other_group_peers, args.bridges, stripes_arg(args))
    fleet.start_agents()
    results["p2p"] = {}
    for n in counts:
        image = os.path.join(fleet.work, f"image-{n}.img")
        make_image(image, size)
        manifest, _ = metainfo.create_manifest(image, fleet.manifest_dir, name=f"fleet-{n}", piece_size=piece_size)
        fleet.procs.check()
        dist = Distribution(fleet, manifest, image, fleet.terminals[:n], timeout=max(120.0, 20 * results["t_min"]),
                            super_seeding=args.super_seeding, origin_leaves=args.origin_leaves,
                            stall_timeout=args.stall_timeout)
        try:
            dist.run()
        finally:
            dist.cleanup()
        os.unlink(image)
        results["p2p"][n] = dist
        results["piece_size"], results["pieces"] = manifest.piece_size, manifest.piece_count
        if dist.stalled:
            print(f"P2P to {n}: stalled ({len(dist.stalled['terminals'])} terminal(s) not done, "
                  f"{dist.stalled['missing']:.1%} of the fleet's bytes missing), origin sent "
                  f"{dist.origin_payload / size:.2f} copies", flush=True)
        else:
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


def stripes_arg(args):
    """policy.stripes as --stripes asks (None: the tracker's default)."""
    return None if args.stripes is None else args.stripes == "on"


def run_delta(fleet, args, counts, size, piece_size):
    """Full image vs. release 2 with --delta % changed pieces; random vs. --zeros % zero image."""
    fleet.start_tracker(args.origin_fanout, args.other_group_peers, args.bridges, stripes_arg(args))
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


def t_bound(size, state):
    """The floor the configured caps set: the server sends the image at least once, every
    terminal receives it, and every room's uplink carries it in at least once (the terminals
    are behind the router whatever the number of rooms). Returns ``(T_bound, {term: s})``."""
    terms = {"F/U_server": size * 8 / state["rate"], "F/D_terminal": size * 8 / state["rate"]}
    if state["uplink"]:
        terms["F/U_uplink"] = size * 8 / state["uplink"]
    return max(terms.values()), terms


def cell(value, width, spec=".1f", suffix=""):
    """``value`` formatted and right-aligned in ``width``, or ``-`` when there is none."""
    return f"{'-' if value is None else format(value, spec) + suffix:>{width}}"


def report(results, args, state, size, http_size, rate_bits):
    """Print the table; returns its rows, one dict per N, for ``--json``."""
    t_min, counts = results["t_min"], results["counts"]
    bound, terms = t_bound(size, state)
    piece = results["piece_size"]
    print(f"\nfleet benchmark: image {size / MIB:.0f} MiB in {results['pieces']} pieces of "
          f"{piece // 1024} KiB; links {rate_bits / 1e6:g} Mbit/s (goodput {results['goodput'] * 8 / 1e6:.1f}); "
          f"{state['rooms']} room(s), uplink {state['uplink'] / 1e6 if state['uplink'] else 'uncapped'}"
          f"{' Mbit/s' if state['uplink'] else ''}; origin_fanout {args.origin_fanout}, other_group_peers "
          f"{args.other_group_peers}{'' if args.bridges is None else f', bridges {args.bridges}'}"
          f"{'' if args.stripes is None else f', stripes {args.stripes}'}"
          f"{f'; origin leaves at {args.origin_leaves:g} copies' if args.origin_leaves else ''}; "
          f"{'light ' if state.get('light') else ''}lab {state['name']} ({state['prefix']}-*); {os.cpu_count()} cores")
    scaled = f" (HTTP measured on {http_size / MIB:.0f} MiB, scaled ×{size / http_size:g})" if http_size != size else ""
    print(f"T_min = one terminal alone = {t_min:.1f} s{scaled}")
    print(f"T_bound = max({', '.join(f'{k} {v:.1f} s' for k, v in terms.items())}) = {bound:.1f} s\n")
    header = (f"{'N':>3} {'T_http':>8} {'T_p2p':>7} {'eff':>5} {'eff_bound':>9} {'speed-up':>9} {'/N':>5} "
              f"{'origin':>7} {'o.peers':>7} {'ramp-up':>8} {'tail':>6} {'upl use':>8} {'verified':>9} {'CPU':>5} "
              f"{'lab CPU':>7}")
    print(header)
    rows = []
    for n in counts:
        d = results["p2p"][n]
        t_http, t_p2p = results["http"].get(n), d.t_fleet
        use = d.uplink_use(results["goodput"])
        row = {
            "n": n, "size": size, "pieces": results["pieces"], "piece_size": piece, "rate": state["rate"],
            "uplink": state["uplink"], "rooms": state["rooms"], "light": bool(state.get("light")),
            "origin_fanout": args.origin_fanout, "other_group_peers": args.other_group_peers,
            "bridges": args.bridges, "stripes": stripes_arg(args), "origin_leaves": args.origin_leaves, "cores": os.cpu_count(),
            "t_min": t_min, "t_bound": bound, "t_http": t_http, "t_p2p": t_p2p,
            "eff": t_min / t_p2p if t_p2p else None, "eff_bound": bound / t_p2p if t_p2p else None,
            "speed_up": t_http / t_p2p if t_http and t_p2p else None,
            "origin_copies": d.origin_payload / size, "origin_peers": d.origin_peers, "ramp_up": d.ramp_up,
            "tail": d.tail, "upl_use": use, "verified": d.t_verified, "cpu": d.cpu, "lab_cpu": d.lab_cpu,
            "room_copies": {f"room{room}": b / size for room, b in sorted(d.uplinks.items())},
            "first_piece": dict(sorted(d.first.items())), "done": dict(sorted(d.downloaded.items())),
            "origin_left": {"at": d.origin_left[0], "copies": d.origin_left[1]} if d.origin_left else None,
            "stalled": d.stalled,
        }
        rows.append(row)
        p2p = cell(t_p2p, 7, suffix="s") if t_p2p else f"{'stalled':>7}"
        per_n = row["speed_up"] / n if row["speed_up"] else None
        print(f"{n:>3} {cell(t_http, 8, suffix='s')} {p2p} {cell(row['eff'], 5, '.2f')}"
              f" {cell(row['eff_bound'], 9, '.2f')} {cell(row['speed_up'], 9, suffix='x')} {cell(per_n, 5, '.2f')}"
              f" {cell(row['origin_copies'], 7, '.2f', 'x')} {d.origin_peers:7d} {cell(d.ramp_up, 8, suffix='s')}"
              f" {cell(d.tail, 6, suffix='s')} {cell(use and 100 * use, 8, '.0f', '%')}"
              f" {cell(d.t_verified, 9, suffix='s')} {d.cpu:4.0f}% {d.lab_cpu:6.0f}%")
    if len(counts) > 1 and all(results["p2p"][n].t_fleet for n in (counts[0], counts[-1])):
        first, last = results["p2p"][counts[0]], results["p2p"][counts[-1]]
        print(f"\nfleet time N={counts[-1]} / N={counts[0]}: {last.t_fleet / first.t_fleet:.2f}")
    print()
    for n in counts:
        d = results["p2p"][n]
        if d.uplinks:
            print(f"N={n}: copies of the image into each room (wire bytes, headers included): " +
                  ", ".join(f"room{room} {b / size:.2f}" for room, b in sorted(d.uplinks.items())))
        print(f"N={n}: latest first piece: {latest(d.latest(d.first))}; latest done: {latest(d.latest(d.downloaded))}")
        if d.origin_left:
            at, copies = d.origin_left
            if d.stalled:
                missing = d.stalled["terminals"]
                outcome = (f"STALLED: no progress for {args.stall_timeout:g} s after {d.stalled['at']:.1f} s; "
                           f"{len(missing)} terminal(s) not done ({', '.join(missing)}), "
                           f"{d.stalled['missing']:.2%} of the fleet's bytes missing")
            else:
                outcome = f"the fleet completed (T_p2p {d.t_fleet:.1f} s)"
            print(f"N={n}: the origin left at {at:.1f} s, having sent {copies:.3f} copies: {outcome}")
    print("\neff = T_min / T_p2p (1.0 = the whole lab in the time one terminal takes alone); eff_bound = T_bound / "
          "T_p2p (T_bound from\nthe configured caps, headers included: about 0.95 is the most a run can show); "
          "speed-up = T_http / T_p2p;\norigin = payload the server's agent uploaded, in copies of the image; ramp-up "
          "= until every terminal held a piece;\ntail = 90 % to 100 % of the fleet's bytes; upl use = terminals' "
          "upload / what their links could carry in T_p2p;\nverified = until every terminal verified its whole slot; "
          "CPU = this machine, all cores; lab CPU = the part of it\nthe lab's agents and tracker used.")
    return rows


def latest(entries):
    return ", ".join(f"{t} {'never' if s is None else f'{s:.1f} s'}" for t, s in entries)


if __name__ == "__main__":
    main()
