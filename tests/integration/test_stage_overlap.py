"""No stage's time grows with terminals ÷ forks: on a lab of 6 terminals run with 2 forks
(3 rounds of every per-terminal task), the agents' verify jobs of all 6 terminals run at the
same time, so do the 6 reboots of the switch's batch, and no slot is read twice for one
release. The lab's two rooms sit behind capped uplinks, and with one bridge per room the
image crosses each room's uplink about once (the tracker's bridges, docs/tracker.md).

Measured on what the terminals themselves record: the agents' job transitions in their
journals, the lab firmware's log of each host's reboot (when its system went down, and
when the firmware booted it again), and the router's byte counter into each room. A lab of
its own (6 terminals in two rooms, 200 Mbit/s links and uplinks, the smallest slots the
lab's release image fits in).

Starting a job on a terminal takes a round of forks (about a second here); a job lasts as
long as its slot takes to read and repair. On a real lab (a 256 GB slot: minutes) the jobs
overlap by far; here each slot is made to need 64 MiB again over 200 Mbit/s links, so that a
job lasts longer than the 3 rounds of starts — as it would at the mission's scale — and a
verify that ran one terminal (or one round) after the other shows."""
import concurrent.futures
import os
import re
import time

import pytest

from helpers import LAB_SKIP_REASON
from lab.sh import run as lab_run
from helpers.modules import collections_path
from helpers.reimage import grubenv, play, record, release_of

pytestmark = [pytest.mark.slow, pytest.mark.skipif(LAB_SKIP_REASON is not None, reason=LAB_SKIP_REASON or "")]
TERMINALS = 6
FORKS = "2"
# "<unix time> <host> p2pfleet-agent[pid]: ... fetch release-2.img (/dev/...): checking -> downloading"
TRANSITION = re.compile(r"^(\d+\.\d+) .*: fetch (\S+) \([^)]*\): (\w+) -> (\w+)")


@pytest.fixture(scope="module")
def overlap_lab(tmp_path_factory):
    from lab import lab as labmod
    from helpers.lab_handle import LabHandle
    name = f"ovl{os.getpid()}"
    state = labmod.up(name, terminals=TERMINALS, rooms=2, rate="200mbit", uplink="200mbit", slot_size="384M")
    try:
        yield LabHandle(state), collections_path(tmp_path_factory.mktemp("collections"))
    finally:
        labmod.down(name)


def transitions(lab, terminal, image, since):
    """``(time, from, to)`` of the terminal's jobs of ``image`` since ``since`` (its agent's journal)."""
    out = lab.ssh(terminal, f"journalctl -u p2pfleet-agent -o short-unix --no-pager --since @{int(since)}")
    found = []
    for line in out.splitlines():
        m = TRANSITION.match(line)
        if m and m.group(2) == image and float(m.group(1)) >= since:
            found.append((float(m.group(1)), m.group(3), m.group(4)))
    return found


def timed_run(lab, collections, playbook, image, *extra):
    """Run a playbook, each line of its output with the time it arrived."""
    proc = play(lab, collections, playbook, image, *extra, popen=True)
    lines = [(time.time(), line.rstrip("\n")) for line in proc.stdout]
    return proc.wait(), lines


def task_results(lines, task):
    """When each host's result of ``task`` arrived (the controller's clock)."""
    found, inside = {}, False
    for when, line in lines:
        if line.startswith("TASK ["):
            inside = line.startswith(f"TASK [{task}")
        m = re.match(r"^(?:ok|changed): \[(\S+)\]", line) if inside else None
        if m:
            found[m.group(1)] = when
    return found


def into_rooms(lab):
    """Bytes the lab's router has sent into each room (its leg ``roomN``)."""
    router = f"{lab.state['prefix']}-router"
    return {room: int(lab_run("cat", f"/sys/class/net/room{room}/statistics/tx_bytes", netns=router).strip())
            for room in range(1, lab.state["rooms"] + 1)}


def sshd_up(lab, terminal):
    """When sshd of the terminal's current boot started listening (its journal)."""
    out = lab.ssh(terminal, "journalctl -b -u ssh -o short-unix --no-pager")
    return next(float(line.split()[0]) for line in out.splitlines() if "Server listening" in line)


# Its lab's setup and teardown count towards pytest's timeout with the test: on a loaded machine
# the three took 300 s (the test itself had passed).
@pytest.mark.timeout(600)
def test_with_two_forks_the_six_verify_jobs_and_the_six_reboots_each_run_together(overlap_lab):
    lab, collections = overlap_lab
    terminals = lab.terminals
    assert len(terminals) == TERMINALS
    # One bridge per room: then exactly one terminal of a room fetches from outside, and the
    # room's uplink carries the image once (the default, two, carries ~1.15 copies in rooms
    # of 8 and more in rooms of 3; docs/performance.md).
    assert play(lab, collections, "seed.yml", "release-2.img", "--forks", FORKS, "-e", "tracker_bridges=1").rc == 0
    started, before = time.time(), into_rooms(lab)
    run = play(lab, collections, "distribute.yml", "release-2.img", "--forks", FORKS,
               "-e", "p2pfleet_local_pieces=false")
    assert run.rc == 0, run.tail()
    # Each room's bridge alone fetched from outside: one copy into each room, not one per
    # terminal there (headers, acknowledgements and the agents' announces add a few %).
    size = os.path.getsize(os.path.join(lab.state["images"], "release-2.img"))
    copies = {room: round((after - before[room]) / size, 2) for room, after in into_rooms(lab).items()}
    assert all(0 < c <= 1.25 for c in copies.values()), f"copies of the image into each room: {copies}"
    # Each agent proved the whole-image digest once, at the end of its fetch.
    for terminal in terminals:
        reads = [t for t in transitions(lab, terminal, "release-2.img", started) if t[2] == "verifying"]
        assert len(reads) == 1, (terminal, transitions(lab, terminal, "release-2.img", started))

    # Every slot changed after its fetch (its first 64 MiB): verify has each agent verify its
    # slot again — started on all 6 before any is waited for, so the 6 jobs run at the same time.
    devices = {terminal: record(lab, terminal)["device"] for terminal in terminals}
    with concurrent.futures.ThreadPoolExecutor(len(terminals)) as pool:
        for done in [pool.submit(lab.ssh, terminal, f"dd if=/dev/urandom of={device} bs=1M count=64 "
                                                   "conv=notrunc,fsync status=none")
                     for terminal, device in devices.items()]:
            done.result()
    started = time.time()
    run = play(lab, collections, "verify.yml", "release-2.img", "--forks", FORKS)
    assert run.rc == 0, run.tail()
    spans = {}
    for terminal in terminals:
        seen = transitions(lab, terminal, "release-2.img", started)
        ends = [t[0] for t in seen if t[2] in ("verified", "seeding")]
        assert seen and ends, (terminal, seen)
        spans[terminal] = (seen[0][0], ends[-1])
        assert record(lab, terminal)["phase"] == "verified", terminal
    latest_start = max(start for start, _end in spans.values())
    first_end = min(end for _start, end in spans.values())
    assert latest_start < first_end, f"the verify jobs ran one after the other, not together: {spans}"

    # Verified once: asking again reads no slot.
    started = time.time()
    assert play(lab, collections, "verify.yml", "release-2.img", "--forks", FORKS).rc == 0
    for terminal in terminals:
        assert transitions(lab, terminal, "release-2.img", started) == [], terminal

    # One batch of 6 reboots with 2 forks: each terminal's reboot runs from its step "tried"
    # (which starts it) until its sshd listens again; every one started before any was back.
    # In rounds of forks, the third round would start only once the first one was back.
    rc, lines = timed_run(lab, collections, "switch.yml", "release-2.img", "--forks", FORKS)
    assert rc == 0, "\n".join(line for _when, line in lines[-60:])
    asked = task_results(lines, "Boot the verified slot once and reboot into it")
    assert sorted(asked) == sorted(terminals), asked
    back = {terminal: sshd_up(lab, terminal) for terminal in terminals}
    spans = {t: (round(asked[t] - min(asked.values()), 1), round(back[t] - min(asked.values()), 1)) for t in terminals}
    assert max(asked.values()) < min(back.values()), f"the reboots ran in rounds, not together: {spans}"
    for terminal in terminals:
        assert release_of(lab, terminal) == "2", terminal
        assert record(lab, terminal)["phase"] == "confirmed", terminal
        assert grubenv(lab, terminal).get("saved_entry") == record(lab, terminal)["slot"], terminal
