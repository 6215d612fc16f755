"""The job the collection exists for: one run of reimage.yml takes a lab from release 1 to
release 2 — real roles, real agents moving the image peer-to-peer into the inactive slots,
real verification, and terminals that really reboot into the new slot and keep it.

A lab of its own (it ends on release 2, which the session lab's other tests do not expect)."""
import os
import subprocess
import sys

import pytest

from conftest import LAB_SKIP_REASON, ROOT
from module_helpers import collections_path

pytestmark = [pytest.mark.slow, pytest.mark.skipif(LAB_SKIP_REASON is not None, reason=LAB_SKIP_REASON or "")]
BIN = os.path.dirname(sys.executable)


@pytest.fixture(scope="module")
def reimage_lab(tmp_path_factory):
    if not os.path.isdir(os.path.join(ROOT, "roles", "swarm_client", "tasks")):
        pytest.skip("the roles are not in this checkout yet")
    from lab import lab as labmod
    from lab_helpers import LabHandle
    name = f"reimage{os.getpid()}"
    # Small images keep the run short; the rooms and caps make the swarm matter.
    state = labmod.up(name, terminals=3, rooms=2, rate="200mbit", uplink="200mbit", slot_size="512M")
    try:
        yield LabHandle(state), collections_path(tmp_path_factory.mktemp("collections"))
    finally:
        labmod.down(name)


def run_playbook(lab, collections, playbook, *extra, timeout=1500):
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=collections, ANSIBLE_FORKS="10", ANSIBLE_NOCOLOR="1",
               ANSIBLE_RETRY_FILES_ENABLED="0", ANSIBLE_DEPRECATION_WARNINGS="False")
    cmd = [os.path.join(BIN, "ansible-playbook"), "-i", lab.inventory, os.path.join(ROOT, "playbooks", playbook),
           "-e", "p2pfleet_image=/srv/images/release-2.img", "-e", "p2pfleet_progress_every=5", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def test_one_run_reimages_the_lab_and_every_terminal_boots_release_2(reimage_lab):
    lab, collections = reimage_lab
    proc = run_playbook(lab, collections, "reimage.yml")
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    out = proc.stdout
    assert "p2pfleet: fleet page http://" in out and "terminals done" in out, out[-4000:]
    assert f"fleet: {len(lab.terminals)} of {len(lab.terminals)} switched" in " ".join(out.split()), out[-3000:]
    for terminal in lab.terminals:
        assert lab.ssh(terminal, "cat /etc/lab-release").strip().endswith("2"), terminal
        env = lab.ssh(terminal, "grub-editenv /boot/grub/grubenv list")
        assert "saved_entry=B" in env and "next_entry=B" not in env, (terminal, env)
