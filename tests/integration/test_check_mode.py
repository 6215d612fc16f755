"""`ansible-playbook --check` of reimage.yml (AWX's "Check" job) on a lab where nothing is
installed yet, and on the same lab after a real reimage: it completes, reports what a real
run would change, shows config changes with --diff — and changes nothing on the hosts.

"Nothing" is read on the hosts before and after, outside Ansible: every file the roles and
stages manage (path, type, mode, size, inode, mtime, and the bytes of the small ones), the
daemons' units (state, main PID, start time), the GRUB environment and default file, and
the bytes of every terminal's slot that is not running (the one a reimage writes).

A lab of its own (1 terminal): it ends on release 2, which the session lab's tests do not
expect."""
import hashlib
import os

import pytest

from conftest import LAB_SKIP_REASON
from module_helpers import collections_path
from reimage_helpers import play

pytestmark = [pytest.mark.slow, pytest.mark.skipif(LAB_SKIP_REASON is not None, reason=LAB_SKIP_REASON or "")]
MANAGED = ("/opt/p2pfleet", "/etc/p2pfleet", "/etc/systemd/system/p2pfleet-agent.service",
           "/etc/systemd/system/p2pfleet-tracker.service", "/var/lib/p2pfleet", "/var/lib/p2pfleet-tracker",
           "/boot/grub")
# Files whose bytes are compared too; the rest (the engine, the virtualenv, the wheels) by
# inode, size and mtime, which any write through Ansible changes.
SMALL = ("/etc/p2pfleet", "/etc/systemd/system", "/var/lib/p2pfleet", "/var/lib/p2pfleet-tracker", "/boot/grub")
SNAPSHOT = (
    "for p in " + " ".join(MANAGED) + "; do [ -e $p ] && find $p -xdev -printf '%p %y %m %s %i %T@\\n'; done | sort; "
    "for p in " + " ".join(SMALL) + "; do [ -d $p ] && find $p -xdev -type f -size -2M -exec sha256sum {} +; done | sort; "
    "systemctl show --property=LoadState,ActiveState,SubState,MainPID,UnitFileState,ExecMainStartTimestampMonotonic "
    "p2pfleet-agent p2pfleet-tracker; "
    "grub-editenv /boot/grub/grubenv list 2>/dev/null; true")
# The seeding agent on the server rewrites its jobs' resume data on its own, whatever Ansible does.
OWN_WRITES = ("/var/lib/p2pfleet/jobs/",)
# playbooks/switch.yml (being rewritten, not this test's to change) reads p2pfleet_try.record.phase;
# in check mode the reimage module answers step 'tried' with the terminal's record as it is,
# and a terminal nothing was ever verified on has none (record: null).


@pytest.fixture(scope="module")
def check_lab(tmp_path_factory):
    from lab import lab as labmod
    from lab_helpers import LabHandle
    name = f"check{os.getpid()}"
    state = labmod.up(name, terminals=1, rooms=1, slot_size="384M")
    try:
        yield LabHandle(state), collections_path(tmp_path_factory.mktemp("collections"))
    finally:
        labmod.down(name)


def snapshot(lab):
    """What check mode must not change, per host."""
    seen = {}
    for host in lab.hosts:
        lines = lab.ssh(host, SNAPSHOT, timeout=120).splitlines()
        seen[host] = [line for line in lines if not any(path in line for path in OWN_WRITES)]
    for terminal in lab.terminals:
        running = lab.firmware(terminal)["slot"]
        for slot, label in (("A", "system_a"), ("B", "system_b")):
            if slot != running:
                seen[terminal].append(f"slot {slot}: {slot_digest(lab.state['hosts'][terminal]['disk'][label])}")
    return seen


def slot_digest(device):
    digest = hashlib.sha256()
    with open(device, "rb") as f:
        while chunk := f.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def assert_unchanged(before, after):
    for host in before:
        gone = sorted(set(before[host]) - set(after[host]))
        new = sorted(set(after[host]) - set(before[host]))
        assert not gone and not new, f"{host} changed in check mode:\n- " + "\n- ".join(gone) + "\n+ " + "\n+ ".join(new)


def test_check_on_a_fresh_lab_reports_the_install_and_changes_nothing(check_lab):
    lab, collections = check_lab
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


def test_check_after_a_reimage_reports_only_the_agent_the_new_slot_lacks_and_changes_nothing(check_lab):
    lab, collections = check_lab
    real = play(lab, collections, "reimage.yml", "release-2.img")
    assert real.rc == 0, real.tail()
    before = snapshot(lab)
    run = play(lab, collections, "reimage.yml", "release-2.img", "--check", "--diff")
    assert run.rc == 0, run.tail()
    assert_unchanged(before, snapshot(lab))
    # release 2's image carries no agent: a real run would install it into the new system, and
    # change nothing else (test_reimage.py's second run)
    assert run.changed_tasks("server") == [], run.changed
    for terminal in lab.terminals:
        changed = run.changed_tasks(terminal)
        assert "p2pfleet.imaging.swarm_client : Render the agent's config from the inventory" in changed, run.changed
        assert all(task.startswith(("p2pfleet.imaging.engine : ", "p2pfleet.imaging.swarm_client : "))
                   for task in changed), changed
    assert f'+host_name: "{lab.terminals[0]}"' in run.out, run.tail()      # --diff shows the config to come
    assert f"{lab.terminals[0]} " in run.out and "switched: runs release-2.img on slot B, confirmed" in run.flat()
