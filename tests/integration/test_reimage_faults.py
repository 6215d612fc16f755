"""One terminal never holds up the lab, and no run ever writes the slot a terminal falls
back to: reimage.yml on a lab where terminals are powered off before and during the run,
where ansible-playbook is killed at each step of the switch (after the one-shot entry and
its reboot's start; after the reboot, before the confirm), and where the tracker is stopped
for a minute in the middle of distribute.

A lab of its own (3 terminals in 2 rooms, real agents, real reboots, real power cuts with
``lab power``). The tests run in order, each starting from where the one before left it."""
import concurrent.futures
import os
import re
import signal
import threading
import time

import pytest

from helpers import LAB_SKIP_REASON
from helpers.modules import collections_path
from helpers.reimage import grubenv, play, record, release_of

pytestmark = [pytest.mark.slow, pytest.mark.skipif(LAB_SKIP_REASON is not None, reason=LAB_SKIP_REASON or "")]
LABELS = {"A": "system_a", "B": "system_b"}


@pytest.fixture(scope="module")
def faults_lab(tmp_path_factory):
    from lab import lab as labmod
    from helpers.lab_handle import LabHandle
    name = f"faults{os.getpid()}"
    # 100 Mbit/s links and 512 MiB slots: distribute takes long enough to cut a terminal midway.
    # (Not 384 MiB: progress comes with the agents' announces, and at 384 MiB the tracker drill's
    # 30-50 % window was seen skipped.)
    state = labmod.up(name, terminals=3, rooms=2, rate="100mbit", uplink="200mbit", slot_size="512M")
    try:
        yield LabHandle(state), collections_path(tmp_path_factory.mktemp("collections"))
    finally:
        labmod.down(name)


def slot_digest(lab, terminal, slot):
    return lab.ssh(terminal, f"sha256sum $(blkid -t PARTLABEL={LABELS[slot]} -o device) | cut -c1-64").strip()


def slot_digests(lab, slots):
    """{terminal: digest of its slot slots[terminal]}, the terminals hashing at the same time."""
    with concurrent.futures.ThreadPoolExecutor(len(slots)) as pool:
        digests = {t: pool.submit(slot_digest, lab, t, slot) for t, slot in slots.items()}
        return {t: digest.result() for t, digest in digests.items()}


def summary_line(run, terminal):
    return next((line for line in run.out.splitlines() if line.strip().strip('",').startswith(terminal + " ")), "")


def test_a_terminal_off_before_the_run_is_reported_unreachable_and_the_others_are_reimaged(faults_lab):
    """Also: no stage's time grows with terminals / forks. With a single fork the reboots of a
    batch still start within seconds of each other (one after the other, each waited for, they
    would start at least one whole reboot — about 15 s on this lab — apart)."""
    lab, collections = faults_lab
    lab.power_off("t03")
    try:
        run = play(lab, collections, "reimage.yml", "release-2.img", "--forks", "1")
    finally:
        lab.power_on("t03")
    since = [lab.firmware(t)["since"] for t in ("t01", "t02")]
    assert max(since) - min(since) < 12, since
    assert run.rc != 0, run.tail()
    assert "unreachable" in summary_line(run, "t03"), run.tail(3000)
    assert "fleet: 2 of 3 switched, 1 unreachable" in run.flat(), run.tail(3000)
    for terminal in ("t01", "t02"):
        assert release_of(lab, terminal) == "2", terminal
        assert grubenv(lab, terminal).get("saved_entry") == "B", terminal
    assert release_of(lab, "t03") == "1"


def test_a_terminal_cut_off_midway_is_dropped_the_others_switch_and_a_rerun_finishes_it(faults_lab):
    lab, collections = faults_lab
    from lab import lab as labmod
    labmod.build_image(lab.state, 3)
    # Every byte over the network, so that there is a midway to cut t02 at.
    proc = play(lab, collections, "reimage.yml", "release-3.img", "-e", "p2pfleet_local_pieces=false",
                "-e", "p2pfleet_drop_after=20", popen=True)
    lines, cut = [], False
    deadline = time.monotonic() + 900
    try:
        for line in proc.stdout:
            lines.append(line)
            if not cut and "p2pfleet: release-3.img" in line and " % " in line:
                percent = float(line.split("release-3.img", 1)[1].split("%")[0])
                if 25 <= percent < 90:
                    lab.power_off("t02")
                    cut = True
            assert time.monotonic() < deadline, "".join(lines[-30:])
        proc.wait(60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    out = "".join(lines)
    assert cut, "distribute ended before it was midway:\n" + out[-4000:]
    assert proc.returncode != 0
    t02 = next(line for line in out.splitlines() if line.strip().strip('",').startswith("t02 "))
    assert "dropped: silent since" in t02 or "dropped: no progress since" in t02, out[-4000:]
    assert "fleet: 2 of 3 switched, 1 dropped" in " ".join(out.split()), out[-4000:]
    for terminal in ("t01", "t03"):
        assert release_of(lab, terminal) == "3", terminal

    # Powered on, its agent takes the fetch up by itself; the next run verifies and switches
    # it, and leaves the others alone (no reboot, nothing fetched).
    lab.power_on("t02")
    boots = {t: lab.firmware(t)["boots"] for t in ("t01", "t03")}
    rerun = play(lab, collections, "reimage.yml", "release-3.img", "-e", "p2pfleet_local_pieces=false")
    assert rerun.rc == 0, rerun.tail()
    assert release_of(lab, "t02") == "3" and record(lab, "t02")["phase"] == "confirmed"
    assert {t: lab.firmware(t)["boots"] for t in ("t01", "t03")} == boots
    assert "fleet: 3 of 3 switched" in rerun.flat(), rerun.tail(3000)


HEALTH_TASK = "Health: the new system answers with its release"


@pytest.mark.parametrize("source, release, kill_at", [
    # every terminal armed its new slot once and started its reboot; none is back yet
    (3, 41, "TASK [Wait for the batch to come back"),
    # every terminal came back on its new slot; the health checks start; none is confirmed
    (41, 42, f"TASK [{HEALTH_TASK}]"),
], ids=["after-the-one-shot-entry", "after-the-reboot-before-confirm"])
def test_a_switch_killed_at_each_step_is_finished_by_a_rerun_and_the_fallback_is_never_written(
        faults_lab, tmp_path, source, release, kill_at):
    lab, collections = faults_lab
    from lab import lab as labmod
    # The next release of the one every terminal runs, a package upgraded inside: the drill is
    # about the switch, so only what changed crosses the network.
    image = os.path.basename(labmod.upgrade_image(lab.state, source, release))
    assert {release_of(lab, t) for t in lab.terminals} == {str(source)}
    health = tmp_path / "health.yml"
    health.write_text(f'- name: "{HEALTH_TASK}"\n  ansible.builtin.command: cat /etc/lab-release\n'
                      "  changed_when: false\n")
    fallback = {t: lab.firmware(t)["slot"] for t in lab.terminals}    # runs now, confirmed
    boots = {t: lab.firmware(t)["boots"] for t in lab.terminals}

    proc = play(lab, collections, "reimage.yml", image, "-e", f"p2pfleet_health_tasks={health}", popen=True)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith(kill_at):
                break
        else:
            raise AssertionError(f"reimage.yml ended before {kill_at!r}:\n" + "".join(lines[-40:]))
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # The reboots started before the kill go on without Ansible: every terminal comes up once more.
    for terminal in lab.terminals:
        lab.wait_for(f"{terminal} back from its reboot",
                     lambda t=terminal: lab.firmware(t).get("boots", 0) > boots[t]
                     and labmod.ssh(lab.state, t, "true").returncode == 0,
                     timeout=180)
    for terminal in lab.terminals:
        env = grubenv(lab, terminal)
        assert env.get("saved_entry") == fallback[terminal], (terminal, env)     # tried, not confirmed
        assert not env.get("next_entry"), (terminal, env)                         # the one-shot was used
        assert record(lab, terminal)["phase"] == "tried", terminal
        assert record(lab, terminal)["slot"] != fallback[terminal], terminal
        assert release_of(lab, terminal) == str(release), terminal               # it runs the new slot once
        assert lab.firmware(terminal)["boots"] == boots[terminal] + 1, terminal
    # The old slot no longer runs (its own system wrote it until the reboot): from now on
    # nothing may change it — it is what every terminal falls back to.
    before = slot_digests(lab, fallback)

    rerun = play(lab, collections, "reimage.yml", image, "-e", f"p2pfleet_health_tasks={health}")
    assert rerun.rc == 0, rerun.tail()
    after = slot_digests(lab, fallback)
    for terminal in lab.terminals:
        assert release_of(lab, terminal) == str(release), terminal
        assert record(lab, terminal)["phase"] == "confirmed", terminal
        assert grubenv(lab, terminal).get("saved_entry") == record(lab, terminal)["slot"], terminal
        # Finished where it stood: no second reboot, and the slot it fell back to while the try
        # ran was never a target.
        assert lab.firmware(terminal)["boots"] == boots[terminal] + 1, terminal
        assert after[terminal] == before[terminal], terminal
    assert f"fleet: {len(lab.terminals)} of {len(lab.terminals)} switched" in rerun.flat(), rerun.tail(3000)


def test_the_tracker_stopped_for_a_minute_midway_is_ridden_out_and_the_run_completes(faults_lab):
    """The swarm goes on without the tracker (its peers are connected already); the fleet
    wait says it is away, drops nobody while it cannot see anyone, says when it is back and
    the run verifies and switches as if nothing happened."""
    lab, collections = faults_lab
    from lab import lab as labmod
    labmod.build_image(lab.state, 5)
    outage = {}

    def stop_the_tracker_for_a_minute():
        lab.ssh("server", "systemctl stop p2pfleet-tracker")
        outage["stopped"] = time.monotonic()
        outage["state"] = lab.ssh("server", "systemctl is-active p2pfleet-tracker", check=False).strip()
        time.sleep(60)
        outage["start"] = labmod.ssh(lab.state, "server", "systemctl start p2pfleet-tracker "
                                     "|| journalctl -u p2pfleet-tracker -n 30 --no-pager", timeout=60).stdout
        outage["started"] = time.monotonic()

    # Every byte over the network, so that there is a midway to stop the tracker at.
    proc = play(lab, collections, "reimage.yml", "release-5.img", "-e", "p2pfleet_local_pieces=false",
                popen=True)
    lines, arrived, outage_thread = [], [], None
    deadline = time.monotonic() + 900
    try:
        for line in proc.stdout:
            lines.append(line)
            arrived.append(time.monotonic())
            midway = re.search(r"p2pfleet: release-5\.img\s+([\d.]+) % ", line)
            if outage_thread is None and midway and 30 <= float(midway.group(1)) < 50:
                outage_thread = threading.Thread(target=stop_the_tracker_for_a_minute, daemon=True)
                outage_thread.start()
            assert time.monotonic() < deadline, "".join(lines[-30:])
        proc.wait(60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if outage_thread is not None:
            outage_thread.join(120)
        # Whatever happened, the next drill finds a tracker.
        lab.ssh("server", "systemctl start p2pfleet-tracker", check=False)
    out = "".join(lines)
    flat = " ".join(out.split())
    assert outage_thread is not None, "distribute never showed 30-50 %:\n" + out[-4000:]
    assert outage.get("state") == "inactive" and outage.get("start") == "", outage
    assert outage["started"] - outage["stopped"] >= 60, outage
    assert proc.returncode == 0, out[-6000:]
    # fleet_wait saw the outage, waited it out, and carried on to the end of the swarm.
    assert "p2pfleet: tracker unreachable since " in out, out[-6000:]
    back = re.search(r"p2pfleet: tracker back after (\d+) s", out)
    assert back and 55 <= int(back.group(1)) <= 180, out[-6000:]
    assert "dropped from the wait" not in out and "3/3 terminals done" in out, out[-6000:]
    # ... and went on soon after the tracker was back: the agents' announces are not backed
    # off for minutes by the outage (the swarm itself went on without the tracker).
    at = {what: arrived[next(i for i, line in enumerate(lines) if what in line)]
          for what in ("p2pfleet: tracker back after", "3/3 terminals done")}
    assert at["3/3 terminals done"] - at["p2pfleet: tracker back after"] <= 60, out[-6000:]
    assert "fleet: 3 of 3 switched" in flat, out[-4000:]
    size_mib = lab.state["slot_size"] / (1 << 20)
    fetched = dict((m.group(1), float(m.group(2))) for m in re.finditer(
        r"(t\d+)\s+slot \S+\s+release-5\.img\s+fetched\s+([\d.]+) MiB", flat))
    assert sorted(fetched) == sorted(lab.terminals), out[-4000:]
    for terminal in lab.terminals:
        # A minute without a tracker cost no piece twice.
        assert fetched[terminal] <= 1.15 * size_mib, (terminal, fetched)
        assert release_of(lab, terminal) == "5", terminal
        assert record(lab, terminal)["phase"] == "confirmed", terminal
        assert grubenv(lab, terminal).get("saved_entry") == record(lab, terminal)["slot"], terminal
    assert lab.ssh("server", "systemctl is-active p2pfleet-tracker").strip() == "active"
