#!/usr/bin/env python3
"""Stage benchmark: how long each stage of playbooks/reimage.yml takes, with Ansible's
default forks (5) and with forks = N, side by side.

For each terminal count N it brings up a virtual lab of its own (docs/lab.md: real hosts,
real agents, real reboots; every host link capped), converges the roles untimed (seed.yml),
then runs reimage.yml twice, each time with a release image it has just built with the lab's
own image builder and ``-e p2pfleet_local_pieces=false`` (every byte of the image crosses
the network into every terminal):

1. with ``ANSIBLE_FORKS=5`` (Ansible's default),
2. with ``ANSIBLE_FORKS=N``,

with an untimed seed.yml before each (a switch boots a slot whose image does not carry the
agent; installing it again is not what is measured). It prints, per N, the seconds of every
stage (from the PLAY headers: seed, distribute, verify, switch, summary) and of the whole
run for both fork settings, their ratio forks5 / forksN, the fleet's transfer (the first
fetch started → every terminal holds the image, from fleet_wait's output), the Ansible
overhead (total − transfer), the bytes the fleet fetched over the network, and this
machine's CPU (all cores, whatever runs on them) for every stage and run, so a run the
machine limited shows as such.

Needs root. Each lab is named after this process and taken down at the end, whatever
happens; no other lab is touched.
"""
import argparse
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
# The lab's disks default to memory, as in fleet.py (set P2PFLEET_LAB_DIR to put them elsewhere).
os.environ.setdefault("P2PFLEET_LAB_DIR", "/dev/shm/p2pfleet-bench-labs")

from lab import disk as lab_disk  # noqa: E402
from lab import lab as labs  # noqa: E402
from lab import net as lab_net  # noqa: E402
from machine import cpu_percent, cpu_ticks  # noqa: E402
from lab.reimage_demo import STAGES  # noqa: E402  (the first play of each stage, as reimage.yml imports them)
from lab.sh import LabError  # noqa: E402

MIB = 1 << 20
ORDER = ("seed", "distribute", "verify", "switch", "summary")
DEFAULT_FORKS = 5
ANSIBLE_PLAYBOOK = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
FETCH_TASK = "TASK [Plan the release and start its fetch"
WAIT_TASK = "TASK [Wait until every fetching terminal holds the release"
RESULT = re.compile(r"^(ok|changed|skipping|fatal|failed): \[")
WAIT_LINE = re.compile(r"^p2pfleet: \S+\s+([\d.]+) % · (\d+)/(\d+) terminals done.* · (\d+) s")
FLEET = re.compile(r"fleet: (\d+) of (\d+) switched.*?; ([\d.]+) MiB fetched over the network, "
                   r"([\d.]+) MiB taken from")
BUSY = 90.0     # machine CPU % from which a run is marked as limited by this machine


class BenchError(Exception):
    """The benchmark cannot go on; the message says why."""


def children_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def other_labs(own):
    """Lab prefixes (pflNN) with network namespaces on this machine, other than ``own``."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return set(re.findall(r"^(pfl\d\d)-", out, re.M)) - {own}


# -- one ansible-playbook run ---------------------------------------------------------------
class Run:
    """One timed run: marks (label, monotonic time, CPU ticks) taken as its output arrives."""

    def __init__(self, forks):
        self.forks = forks
        self.marks = {}
        self.rc = None
        self.wait_seconds = None
        self.fetched = self.local = None
        self.switched = None
        self.ansible_cpu = 0.0
        self.other_labs = set()

    def mark(self, label):
        self.marks.setdefault(label, (time.monotonic(), cpu_ticks()))

    def span(self, start, end):
        if start not in self.marks or end not in self.marks:
            return None
        return self.marks[end][0] - self.marks[start][0]

    def cpu(self, start, end):
        if start not in self.marks or end not in self.marks:
            return None
        return cpu_percent(self.marks[start][1], self.marks[end][1])

    def stage_bounds(self):
        """{stage: (start mark, end mark)}; seed starts with ansible-playbook itself."""
        seen = [s for s in ORDER if s in self.marks]
        bounds = {}
        for i, stage in enumerate(seen):
            start = "start" if stage == "seed" else stage
            bounds[stage] = (start, seen[i + 1] if i + 1 < len(seen) else "end")
        return bounds

    def stage(self, stage):
        bounds = self.stage_bounds().get(stage)
        return self.span(*bounds) if bounds else None

    def stage_cpu(self, stage):
        bounds = self.stage_bounds().get(stage)
        return self.cpu(*bounds) if bounds else None

    @property
    def total(self):
        return self.span("start", "end")

    @property
    def transfer(self):
        return self.span("fetch", "held")

    @property
    def overhead(self):
        return self.total - self.transfer if self.transfer is not None else None


class Bench:
    def __init__(self, args, work):
        self.args, self.work = args, work
        self.collections = os.path.join(work, "collections")
        link = os.path.join(self.collections, "ansible_collections", "p2pfleet")
        os.makedirs(link)
        os.symlink(ROOT, os.path.join(link, "imaging"))
        self.proc = None           # the ansible-playbook running now
        self.labs = []             # labs this process brought up (and only those are taken down)
        self.images = []           # release images this process built

    def playbook(self, state, playbook, image, forks, log, run=None):
        env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=self.collections, ANSIBLE_FORKS=str(forks),
                   ANSIBLE_NOCOLOR="1", ANSIBLE_RETRY_FILES_ENABLED="0", ANSIBLE_DEPRECATION_WARNINGS="False",
                   ANSIBLE_LOCALHOST_WARNING="False", ANSIBLE_INVENTORY_UNPARSED_WARNING="False")
        cmd = [ANSIBLE_PLAYBOOK, "-i", state["inventory"], os.path.join(ROOT, "playbooks", playbook),
               "-e", f"p2pfleet_image=/srv/images/{image}", "-e", "p2pfleet_progress_every=5",
               "-e", "p2pfleet_local_pieces=false"]
        run = run or Run(forks)
        cpu_before = children_cpu()
        in_fetch = in_wait = False
        last_wait = None
        tail = []
        with open(log, "w") as out:
            out.write("$ ANSIBLE_FORKS=%d %s\n" % (forks, " ".join(cmd)))
            run.mark("start")
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                         start_new_session=True, cwd=ROOT)
            for line in self.proc.stdout:
                out.write(line)
                tail = (tail + [line])[-60:]
                if line.startswith("PLAY [") and "]" in line:
                    stage = STAGES.get(line[6:line.index("]")])
                    if stage:
                        run.mark(stage)
                elif line.startswith("TASK ["):
                    in_fetch, in_wait = line.startswith(FETCH_TASK), line.startswith(WAIT_TASK)
                elif in_fetch and RESULT.match(line):
                    run.mark("fetch")          # the first terminal's fetch is running
                    in_fetch = False
                elif in_wait and (m := WAIT_LINE.match(line)):
                    last_wait = (time.monotonic(), cpu_ticks(), int(m.group(4)), m.group(2) == m.group(3))
                elif in_wait and RESULT.match(line):
                    in_wait = False
                    if last_wait and last_wait[3]:
                        run.marks.setdefault("held", last_wait[:2])   # fleet_wait's last line: all hold it
                        run.wait_seconds = last_wait[2]
            run.rc = self.proc.wait()
            run.mark("end")
        self.proc = None
        run.ansible_cpu = children_cpu() - cpu_before
        text = " ".join(open(log).read().split())
        if m := FLEET.search(text):
            run.switched = (int(m.group(1)), int(m.group(2)))
            run.fetched, run.local = float(m.group(3)) * MIB, float(m.group(4)) * MIB
        run.tail = "".join(tail)
        return run

    def converge(self, state, image, n, logs, k):
        """seed.yml, untimed, until it passes (at most 3 runs): the roles installed, the agents running.

        A first install on a freshly switched slot can lose its agent: the role's handlers
        restart it and send it SIGHUP (reload) a second later, and an agent that has not set
        up its SIGHUP handler yet dies of it (systemd counts that as a clean stop). The
        second run finds the config unchanged and starts the agent. Counted and printed.
        """
        t0 = time.monotonic()
        for attempt in range(1, 4):
            log = os.path.join(logs, f"converge{k}-{attempt}.log")
            converge = self.playbook(state, "seed.yml", image, max(n, DEFAULT_FORKS), log)
            if converge.rc == 0:
                break
            lost = "Timeout when waiting for file /run/p2pfleet/agent.sock" in open(log).read()
            print(f"   converge run {attempt} failed (rc {converge.rc}"
                  f"{': an agent did not come up after its install' if lost else ''}); log {log}", flush=True)
            if not lost:
                break
        if converge.rc != 0:
            raise BenchError(f"N={n}: the untimed seed.yml (converge) failed, rc {converge.rc}; "
                             f"log {log}:\n{converge.tail}")
        print(f"   converged (seed.yml {image}, untimed, {attempt} run(s)) in {time.monotonic() - t0:.0f} s",
              flush=True)

    def stop_playbook(self):
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 20)):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(wait)
                return
            except ProcessLookupError:
                return
            except subprocess.TimeoutExpired:
                continue

    def build_release(self, state, release):
        path = os.path.join(state["images"], f"release-{release}.img")
        if os.path.exists(path):
            raise BenchError(f"{path} exists already: not a new release")
        self.images.append(path)
        labs.build_image(state, release)
        return os.path.basename(path)

    def release_of(self, state, name):
        return labs.ssh(state, name, "cat", "/etc/lab-release").stdout.strip()

    def measure(self, n, index):
        """One lab of ``n`` terminals: converge, then reimage.yml with forks 5 and forks n."""
        args = self.args
        name = f"{args.lab}n{n}"
        started = time.monotonic()
        print(f"\n== N={n}: lab {name} ({n} terminals, {min(args.rooms, n)} room(s), links {args.rate}, "
              f"slots {args.slot_size})", flush=True)
        state = labs.up(name, terminals=n, rooms=min(args.rooms, n), rate=args.rate, uplink=args.uplink,
                        slot_size=args.slot_size)
        self.labs.append(name)
        terminals = sorted(h for h, host in state["hosts"].items() if host["role"] == "terminal")
        logs = os.path.join(self.work, f"n{n}")
        os.makedirs(logs)
        runs = []
        try:
            releases = [self.build_release(state, f"{os.getpid()}{index:02d}{k}") for k in (1, 2)]
            print(f"   up and images built in {time.monotonic() - started:.0f} s: "
                  f"{', '.join(releases)}", flush=True)
            previous = "release-2.img"      # the lab's own: seeded by the first converge only
            for k, (forks, image) in enumerate(zip((DEFAULT_FORKS, n), releases)):
                self.converge(state, previous, n, logs, k)
                run = Run(forks)
                run.other_labs = other_labs(state["prefix"])
                self.playbook(state, "reimage.yml", image, forks, os.path.join(logs, f"reimage{k}-forks{forks}.log"), run)
                run.other_labs |= other_labs(state["prefix"])
                missing = [s for s in ORDER if s not in run.marks]
                if run.rc != 0 or missing or run.transfer is None or run.switched != (n, n):
                    raise BenchError(f"N={n}, forks {forks}: reimage.yml rc {run.rc}, stages not seen {missing}, "
                                     f"switched {run.switched}, transfer {'seen' if run.transfer else 'not seen'}; "
                                     f"log {logs}/reimage{k}-forks{forks}.log:\n{run.tail}")
                release = image.removeprefix("release-").removesuffix(".img")
                wrong = [t for t in terminals if self.release_of(state, t) != release]
                if wrong:
                    raise BenchError(f"N={n}, forks {forks}: {', '.join(wrong)} do not run {image}")
                print(f"   forks {forks:>2}: reimage.yml {image} in {run.total:.1f} s (transfer {run.transfer:.1f} s, "
                      f"CPU {run.cpu('start', 'end'):.0f} %)", flush=True)
                runs.append(run)
                previous = image
        except Exception:
            self.stop_playbook()
            self.collect(state, logs)
            raise
        finally:
            self.stop_playbook()
            self.down(name)
            self.remove_images()
        return {"n": n, "name": name, "runs": runs, "image_size": state["slot_size"], "rate": state["rate"],
                "rooms": state["rooms"], "uplink": state["uplink"]}

    def collect(self, state, logs):
        """What every host's agent and tracker said, for a failed run (best effort)."""
        for host in sorted(state["hosts"]):
            try:
                out = labs.ssh(state, host, "journalctl", "--no-pager", "-n", "200", "-u", "p2pfleet-agent",
                               "-u", "p2pfleet-tracker", timeout=30)
                with open(os.path.join(logs, f"{host}-journal.log"), "w") as f:
                    f.write(out.stdout + out.stderr)
            except (OSError, subprocess.SubprocessError):
                pass

    def down(self, name):
        """Take our lab ``name`` down; a failure is printed, not raised (it must not hide the first error)."""
        if name not in self.labs:
            return
        self.labs.remove(name)
        try:
            labs.down(name)
        except LabError as exc:
            print(f"stage benchmark: taking lab {name} down: {exc}", file=sys.stderr, flush=True)

    def remove_images(self):
        for path in self.images:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        self.images = []

    def close(self):
        self.stop_playbook()
        for name in list(self.labs):
            self.down(name)
        self.remove_images()


# -- the report -----------------------------------------------------------------------------
def seconds(value):
    return f"{value:7.1f}s" if value is not None else f"{'-':>8}"


def ratio(a, b):
    return f"{a / b:6.2f}" if a is not None and b else f"{'-':>6}"


def percent(value):
    if value is None:
        return f"{'-':>6}"
    return f"{value:4.0f}%{'!' if round(value) >= BUSY else ' '}"


def report(result):
    n, (five, many) = result["n"], result["runs"]
    size = result["image_size"]
    floor = size * 8 / (result["rate"] * 0.96) if result["rate"] else None     # tbf goodput ≈ 96 % of the cap
    links = f"{result['rate'] / 1e6:g} Mbit/s" if result["rate"] else "uncapped"
    uplink = f"{result['uplink'] / 1e6:g} Mbit/s" if result["uplink"] else "uncapped"
    print(f"\nN={n}: reimage.yml, {n} terminals in {result['rooms']} room(s), links {links}, uplinks {uplink}, "
          f"image {size / MIB:.0f} MiB (every byte over the network), {os.cpu_count()} cores"
          + (f"; one terminal alone at the link's goodput: {floor:.1f} s" if floor else ""))
    a, b = DEFAULT_FORKS, n
    print(f"{'':12} {f'forks {a}':>8} {f'forks {b}':>8} {f'{a}/{b}':>6}   {f'CPU f{a}':>6} {f'CPU f{b}':>6}")
    for stage in ORDER:
        x, y = five.stage(stage), many.stage(stage)
        print(f"{stage:12} {seconds(x)} {seconds(y)} {ratio(x, y)}   {percent(five.stage_cpu(stage))} "
              f"{percent(many.stage_cpu(stage))}")
    print(f"{'total':12} {seconds(five.total)} {seconds(many.total)} {ratio(five.total, many.total)}   "
          f"{percent(five.cpu('start', 'end'))} {percent(many.cpu('start', 'end'))}")
    print(f"{'transfer':12} {seconds(five.transfer)} {seconds(many.transfer)} {ratio(five.transfer, many.transfer)}   "
          f"{percent(five.cpu('fetch', 'held'))} {percent(many.cpu('fetch', 'held'))}")
    print(f"{'fleet_wait':12} {seconds(five.wait_seconds)} {seconds(many.wait_seconds)} "
          f"{ratio(five.wait_seconds, many.wait_seconds)}")
    print(f"{'overhead':12} {seconds(five.overhead)} {seconds(many.overhead)} {ratio(five.overhead, many.overhead)}")
    print(f"{'ansible CPU':12} {seconds(five.ansible_cpu)} {seconds(many.ansible_cpu)} "
          f"{ratio(five.ansible_cpu, many.ansible_cpu)}")
    print(f"{'fetched':12} " + " ".join(f"{r.fetched / (n * size):7.2f}x" for r in (five, many))
          + "   (MiB over the network / (N × image))")
    others = sorted(five.other_labs | many.other_labs)
    print(f"other labs up on this machine during the runs: {', '.join(others) if others else 'none'}")
    busy = [f"forks {r.forks}" for r in (five, many) if round(r.cpu("start", "end")) >= BUSY]
    if busy:
        print(f"NOTE: this machine's CPU was at {BUSY:.0f} % or more during the whole run with {' and '.join(busy)}: "
              "that run measured the machine as much as the playbooks")


def legend():
    print("\nseed..summary = from each stage's first PLAY header to the next (seed includes ansible-playbook's "
          "start-up);\ntotal = the whole ansible-playbook run; transfer = the first terminal's fetch started → "
          "fleet_wait's last line\n(every terminal holds the image); fleet_wait = its own wait (its last line); "
          "overhead = total − transfer;\nansible CPU = CPU seconds of ansible-playbook and its workers; fetched = "
          "bytes the terminals fetched over\nthe network, in images per terminal; CPU = this machine, all cores, "
          "whatever runs on them\n(! = 90 % or more: the machine was the limit).")


def check_memory(counts, slot_size):
    """Refuse early when the lab's disks (in memory by default) cannot fit."""
    if not os.environ["P2PFLEET_LAB_DIR"].startswith("/dev/shm"):
        return
    # both slots of every terminal written in full, boot and state partitions, the server, a margin
    need = max(counts) * (2 * slot_size + 128 * MIB) + 2 * (1 << 30)
    with open("/proc/meminfo") as f:
        avail = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    if need > avail:
        raise SystemExit(f"N={max(counts)} needs about {need >> 30} GiB of memory for the lab's disks, "
                         f"{avail >> 30} GiB are available: fewer terminals, a smaller --slot-size, or "
                         f"P2PFLEET_LAB_DIR on a disk")


def parse_counts(text):
    try:
        counts = sorted({int(x) for x in text.split(",")})
    except ValueError:
        counts = []
    if not counts or counts[0] < 1:
        raise SystemExit(f"--terminals {text!r}: a comma-separated list of terminal counts, e.g. 4,8,16")
    return counts


def on_signal(signum, _frame):
    raise SystemExit(128 + signum)      # runs every finally: the playbook stopped, the labs down


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--terminals", default="4,8", help="terminal counts, one lab each, e.g. 4,8,16 (default 4,8)")
    parser.add_argument("--rate", default="100mbit", help="every host link's cap (default 100mbit)")
    parser.add_argument("--rooms", type=int, default=1, help="rooms the terminals are split into (default 1)")
    parser.add_argument("--uplink", default="none", help="each room's uplink cap (default none: uncapped)")
    parser.add_argument("--slot-size", default="384M",
                        help="slot and image size (default 384M; the release image needs about 340M)")
    parser.add_argument("--lab", default=f"stages{os.getpid()}",
                        help="name prefix of the labs (default stagesPID; the lab of N terminals is PREFIXnN)")
    parser.add_argument("--logs", default=None,
                        help="keep every ansible-playbook output in this directory (default: kept only on failure)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("the stage benchmark needs root (a virtual lab)")
    counts = parse_counts(args.terminals)
    try:
        slot_size = lab_disk.parse_size(args.slot_size)
        lab_net.parse_rate(args.rate)
        lab_net.parse_rate(args.uplink)
        labs.check_name(f"{args.lab}n{counts[-1]}")
    except LabError as exc:
        sys.exit(f"stage benchmark: {exc}")
    check_memory(counts, slot_size)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    work = args.logs or tempfile.mkdtemp(prefix="p2pfleet-stages-")
    os.makedirs(work, exist_ok=True)
    bench = Bench(args, work)
    failed = True
    results = []
    try:
        for index, n in enumerate(counts):
            results.append(bench.measure(n, index))
            report(results[-1])         # now: a later N that fails or is stopped does not lose it
        failed = False
    except (BenchError, LabError) as exc:
        print(f"stage benchmark: {exc}", file=sys.stderr)
    finally:
        bench.close()
        shutil.rmtree(bench.collections, ignore_errors=True)
        if failed or args.logs:
            print(f"stage benchmark: ansible-playbook outputs in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    if results:
        legend()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
