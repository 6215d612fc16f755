"""The job the collection exists for: reimage.yml takes a lab from release 1 to release 2 —
real roles, real agents moving the image peer-to-peer into the inactive slots, real
verification, and terminals that really reboot into the new slot and keep it. Then what goes
wrong in real labs: a run killed midway, an agent killed, a slot that went bad after its
fetch, a release that does not boot.

And `ansible-playbook --check` of reimage.yml (AWX's "Check" job) on this lab before anything
is installed, and again right after the first reimage: it completes, reports what a real run
would change, shows config changes with --diff — and changes nothing on the hosts
(check_mode_helpers.py says what is compared). They share the lab and its first real run
instead of a lab and a reimage of their own.

A lab of its own (it ends far from release 1, which the session lab's other tests expect).
The tests run in order, each starting from where the one before left the lab."""
import json
import os
import re
import signal
import time

import pytest

from helpers.check_mode import assert_unchanged, snapshot
from helpers import LAB_SKIP_REASON
from helpers.modules import collections_path
from helpers.playbook import run_playbook
from helpers.reimage import grubenv, play, record, release_of

pytestmark = [pytest.mark.slow, pytest.mark.skipif(LAB_SKIP_REASON is not None, reason=LAB_SKIP_REASON or "")]
ROLE_TASKS = ("p2pfleet.imaging.engine : ", "p2pfleet.imaging.swarm_client : ")


@pytest.fixture(scope="module")
def reimage_lab(tmp_path_factory):
    from lab import lab as labmod
    from helpers.lab_handle import LabHandle
    name = f"reimage{os.getpid()}"
    # The smallest slots the release image fits in keep the run short (every fetch, verify and
    # check-mode snapshot reads whole slots); the rooms and caps make the swarm matter.
    state = labmod.up(name, terminals=3, rooms=2, rate="200mbit", uplink="200mbit", slot_size="384M")
    try:
        yield LabHandle(state), collections_path(tmp_path_factory.mktemp("collections"))
    finally:
        labmod.down(name)


def jobs(lab, collections, tmp_path, manifest):
    """Every terminal's job of ``manifest`` as its agent reports it (swarm_job_info)."""
    out = str(tmp_path)
    info = {"hosts": "terminals", "become": True, "gather_facts": False, "tasks": [
        {"p2pfleet.imaging.swarm_job_info": {"manifest": f"/var/lib/p2pfleet/manifests/{manifest}"},
         "register": "info"},
        {"ansible.builtin.copy": {"content": "{{ info.job | to_json }}", "dest": f"{out}/{{{{ inventory_hostname }}}}.json"},
         "delegate_to": "localhost"}]}
    run = run_playbook(lab.inventory, collections, [info])
    assert run.rc == 0, run.tail()
    result = {}
    for name in lab.terminals:
        with open(os.path.join(out, f"{name}.json")) as f:
            result[name] = json.load(f)
    return result


def test_check_on_a_fresh_lab_reports_the_install_and_changes_nothing(reimage_lab):
    lab, collections = reimage_lab
    before = snapshot(lab)
    run = play(lab, collections, "reimage.yml", "release-2.img", "--check")
    assert_unchanged(before, snapshot(lab))
    for host in lab.hosts:
        assert "p2pfleet.imaging.engine : Copy the engine to the host" in run.changed_tasks(host), run.changed
        assert "p2pfleet.imaging.swarm_client : Install the agent's systemd unit (shipped with the engine)" \
            in run.changed_tasks(host), run.changed
    assert "p2pfleet.imaging.tracker : Render the tracker's config from the inventory" in run.changed_tasks("server")
    assert "check mode: /srv/images/release-2.img on server has no manifest yet" in run.flat(), run.tail()
    assert run.rc == 0, run.tail()
    assert f"fleet: 0 of {len(lab.terminals)} switched" in run.flat(), run.tail(3000)


def test_one_run_reimages_the_lab_and_every_terminal_boots_release_2(reimage_lab):
    lab, collections = reimage_lab
    run = play(lab, collections, "reimage.yml", "release-2.img")
    assert run.rc == 0, run.tail()
    assert "p2pfleet: fleet page http://" in run.out and "terminals done" in run.out, run.tail(4000)
    assert f"fleet: {len(lab.terminals)} of {len(lab.terminals)} switched" in run.flat(), run.tail(3000)
    for terminal in lab.terminals:
        assert release_of(lab, terminal) == "2", terminal
        env = grubenv(lab, terminal)
        assert env.get("saved_entry") == "B" and not env.get("next_entry"), (terminal, env)


def test_check_after_a_reimage_reports_only_the_agent_the_new_slot_lacks_and_changes_nothing(reimage_lab):
    """Right after the first real reimage (the test before): the lab holds release 2, confirmed."""
    lab, collections = reimage_lab
    before = snapshot(lab)
    run = play(lab, collections, "reimage.yml", "release-2.img", "--check", "--diff")
    assert run.rc == 0, run.tail()
    assert_unchanged(before, snapshot(lab))
    # release 2's image carries no agent: a real run would install it into the new system, and
    # change nothing else (the next test's second run)
    assert run.changed_tasks("server") == [], run.changed
    for terminal in lab.terminals:
        changed = run.changed_tasks(terminal)
        assert "p2pfleet.imaging.swarm_client : Render the agent's config from the inventory" in changed, run.changed
        assert all(task.startswith(("p2pfleet.imaging.engine : ", "p2pfleet.imaging.swarm_client : "))
                   for task in changed), changed
    assert f'+host_name: "{lab.terminals[0]}"' in run.out, run.tail()      # --diff shows the config to come
    assert f"{lab.terminals[0]} " in run.out and "switched: runs release-2.img on slot B, confirmed" in run.flat()


def test_a_second_run_moves_nothing_and_reboots_nothing(reimage_lab):
    lab, collections = reimage_lab
    again = play(lab, collections, "reimage.yml", "release-2.img")
    assert again.rc == 0, again.tail()
    # release 2's image does not carry the agent: it is installed into the new system, and
    # that is all this run changes
    assert all(task.startswith(ROLE_TASKS) for task in again.changed_tasks()), again.changed
    for terminal in lab.terminals:
        assert lab.firmware(terminal)["boots"] == 2, terminal        # the switch's reboot only
    third = play(lab, collections, "reimage.yml", "release-2.img")
    assert third.rc == 0, third.tail()
    assert all(stats["changed"] == 0 for stats in third.recap.values()), third.changed
    # The summary alone judges against the release it is given, not what a terminal last confirmed.
    alone = play(lab, collections, "summary.yml", "release-2.img")
    assert alone.rc == 0 and f"fleet: {len(lab.terminals)} of {len(lab.terminals)} switched" in alone.flat(), alone.tail()
    # Release 3, which no terminal holds yet, is built here, where it is first needed (the next
    # test fetches it): not one a cache kept from an earlier session.
    from lab import lab as labmod
    labmod.build_image(lab.state, 3)
    other = play(lab, collections, "summary.yml", "release-3.img")
    assert other.rc != 0 and f"fleet: 0 of {len(lab.terminals)} switched" in other.flat(), other.tail()
    assert "holds release-2.img (confirmed), not this release" in other.flat(), other.tail()


def test_distribute_killed_midway_goes_on_and_a_rerun_fetches_nothing_twice(reimage_lab, tmp_path):
    lab, collections = reimage_lab
    assert play(lab, collections, "seed.yml", "release-3.img").rc == 0
    # Every byte over the network, so that there is a midway to kill it at (release 3 differs
    # from the slots' releases in a few pieces: test_release_4_moves_only_what_changed).
    proc = play(lab, collections, "distribute.yml", "release-3.img", "-e", "p2pfleet_local_pieces=false",
                popen=True)
    seen = []
    deadline = time.monotonic() + 300
    try:
        for line in proc.stdout:
            seen.append(line)
            if "p2pfleet: release-3.img" in line and " % " in line:
                percent = float(line.split("release-3.img", 1)[1].split("%")[0])
                if 20 <= percent < 100:      # progress comes with announces: take the first midway line
                    break
            assert time.monotonic() < deadline, "".join(seen[-30:])
        else:
            raise AssertionError("distribute ended before it was midway:\n" + "".join(seen[-40:]))
    finally:
        os.killpg(proc.pid, signal.SIGKILL)     # ansible-playbook and its workers, as a killed CI job
        proc.wait()
    lab.ssh("t01", "kill -KILL $(systemctl show --property=MainPID --value p2pfleet-agent)")   # and one agent with it

    rerun = play(lab, collections, "distribute.yml", "release-3.img", "-e", "p2pfleet_local_pieces=false")
    assert rerun.rc == 0, rerun.tail()
    # every job was found where the agents had carried on (t01's after its restart), none put again
    assert "Plan the release and start its fetch (the agent chooses the slot and returns at once)" \
        not in rerun.changed_tasks(), rerun.changed
    found = jobs(lab, collections, tmp_path, "release-3.img.manifest.json")
    size = found["t01"]["bytes_total"]
    for terminal, job in found.items():
        assert job["state"] in ("verified", "seeding"), (terminal, job)
        # what came over the network in the job's whole life (before the kill and after it):
        # pieces saved before the kill never came twice
        assert job["downloaded"] <= size * 1.15, (terminal, job)
    assert found["t01"]["resumed_bytes"] > 0, found["t01"]    # the killed agent went on, not from zero


def test_a_slot_changed_after_its_fetch_is_verified_again_by_its_agent_and_repaired(reimage_lab, tmp_path):
    lab, collections = reimage_lab
    target = record(lab, "t01")["device"]
    # Its first MiB (where a file system keeps its superblock: what mounting or formatting it
    # changes): the slot's fingerprint samples it, so the agent's verdict no longer holds.
    lab.ssh("t01", f"dd if=/dev/urandom of={target} bs=1M count=1 conv=notrunc,fsync status=none")
    verify = play(lab, collections, "verify.yml", "release-3.img")
    assert verify.rc == 0, verify.tail()
    assert record(lab, "t01")["phase"] == "verified" and record(lab, "t02")["phase"] == "verified"
    found = jobs(lab, collections, tmp_path, "release-3.img.manifest.json")
    # t01's agent kept what still matched and fetched the changed MiB again; the others read nothing.
    assert found["t01"]["downloaded"] < found["t01"]["bytes_total"] // 8, found["t01"]

    run = play(lab, collections, "reimage.yml", "release-3.img")
    assert run.rc == 0, run.tail()
    for terminal in lab.terminals:
        assert release_of(lab, terminal) == "3", terminal
        assert grubenv(lab, terminal).get("saved_entry") == "A", terminal


def test_a_release_that_does_not_boot_is_rolled_back_and_nothing_is_left_unbootable(reimage_lab):
    lab, collections = reimage_lab
    run = play(lab, collections, "reimage.yml", "broken.img")
    assert run.rc != 0
    flat = run.flat()
    for terminal in lab.terminals:
        assert f"{terminal}: rolled back: " in flat, run.tail()
        assert release_of(lab, terminal) == "3", terminal             # back on the confirmed slot
        env = grubenv(lab, terminal)
        assert env.get("saved_entry") == "A" and not env.get("next_entry"), (terminal, env)
        assert record(lab, terminal)["phase"] == "rolled_back", terminal
    assert f"fleet: 0 of {len(lab.terminals)} switched, {len(lab.terminals)} rolled back" in flat, run.tail(3000)


def test_release_4_with_a_package_upgraded_inside_moves_only_what_changed(reimage_lab):
    """Release 4 is release 3 changed in place (a package of 8 MiB installed, /etc/lab-release
    rewritten): each terminal takes what its slots already hold from its own disks and fetches
    only the changed pieces; the slot is verified and booted like any other."""
    lab, collections = reimage_lab
    from lab import lab as labmod
    labmod.upgrade_image(lab.state, 3, 4, package_mib=8)
    run = play(lab, collections, "reimage.yml", "release-4.img")
    assert run.rc == 0, run.tail()
    flat = run.flat()
    size_mib = lab.state["slot_size"] / (1 << 20)
    rows = dict((m.group(1), (float(m.group(2)), float(m.group(3)))) for m in re.finditer(
        r"(t\d+)\s+slot \S+\s+release-4\.img\s+fetched\s+([\d.]+) MiB\s+local\s+([\d.]+) MiB", flat))
    assert sorted(rows) == sorted(lab.terminals), run.tail(3000)
    for terminal, (fetched, local) in rows.items():
        # 8 MiB of package and the file system's metadata around it: about 2 % of the image
        assert fetched <= 0.1 * size_mib, (terminal, fetched, local)
        assert local >= 0.85 * size_mib, (terminal, fetched, local)
        assert release_of(lab, terminal) == "4", terminal
    assert "MiB taken from the terminals' own disks" in flat, run.tail(3000)
