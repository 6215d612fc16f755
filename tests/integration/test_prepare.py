"""playbooks/prepare.yml on a lab terminal, over SSH, on a real disk: a second loop device the
terminal sees as /dev/loopN, as a disk plugged into a terminal booted from another system.
A disk holding data is refused in one line and not written; with p2pfleet_prepare_wipe it
gets the layout (boot, slot A, slot B, state), the collection's GRUB configuration and an
empty GRUB environment on the boot partition, and a state file system; a second run changes
nothing; and the disk the terminal runs from is left alone, or refused, never written.

The disk is read back from the controller with other tools than the ones that wrote it
(sgdisk, debugfs, blkid). A lab of its own (1 terminal): its terminal gets a second disk."""
import hashlib
import json
import os
import subprocess
import uuid

import pytest

from helpers import LAB_SKIP_REASON, ROOT
from helpers.modules import collections_path
from helpers.playbook import run_playbook

pytestmark = [pytest.mark.slow, pytest.mark.skipif(LAB_SKIP_REASON is not None, reason=LAB_SKIP_REASON or "")]
PREPARE = os.path.join(ROOT, "playbooks", "prepare.yml")
TERMINAL = "t01"
SMALL = ("-e", "p2pfleet_prepare_boot_size=16M", "-e", "p2pfleet_prepare_state_size=16M")
# GRUB for BIOS firmware on a GPT disk needs a partition of its own, ahead of boot.
BIOS = ("-e", json.dumps({"p2pfleet_prepare_first_partitions": [
    {"label": "bios_grub", "size": "1M", "type": "bios_grub"}]}))
LAY_OUT = "Lay the disk out (refused if it holds anything, unless p2pfleet_prepare_wipe is true)"
ANSIBLE_UUID_NAMESPACE = uuid.UUID("361E6D51-FAEC-444A-9079-341386DA8E2E")   # to_uuid's


@pytest.fixture(scope="module")
def prepare_lab(tmp_path_factory):
    from lab import lab as labmod
    from helpers.lab_handle import LabHandle
    name = f"prepare{os.getpid()}"
    state = labmod.up(name, terminals=1, rooms=1, slot_size="384M")
    try:
        lab = LabHandle(state)
        spare = lab.add_disk(TERMINAL, 192 << 20)
        lab.power_off(TERMINAL)
        lab.power_on(TERMINAL)
        yield lab, spare, collections_path(tmp_path_factory.mktemp("collections"))
    finally:
        labmod.down(name)


def prepare(lab, collections, disk, *extra):
    return run_playbook(lab.inventory, collections, PREPARE, "--limit", TERMINAL,
                        "-e", f"p2pfleet_prepare_disk={disk}", *extra)


def digest(device):
    with open(device, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def table(device):
    return json.loads(subprocess.run(["sfdisk", "--json", device], check=True, capture_output=True,
                                     text=True).stdout)["partitiontable"]


def boot_file(device, path):
    return subprocess.run(["debugfs", "-R", f"cat {path}", device], check=True, capture_output=True).stdout


def test_a_disk_with_data_is_refused_in_one_line_and_nothing_is_written(prepare_lab):
    lab, spare, collections = prepare_lab
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "old-home", spare], check=True)
    before = digest(spare)
    run = prepare(lab, collections, spare, *SMALL)
    assert run.rc != 0
    assert run.failures == [f"{LAY_OUT}: fatal: [{TERMINAL}]: FAILED! => {{\"changed\": false, \"msg\": \"{spare} holds "
                            f"data (an ext2/3/4 file system); nothing written: set wipe to erase it\"}}"], run.tail()
    checked = prepare(lab, collections, spare, *SMALL, "-e", "p2pfleet_prepare_wipe=true", "--check", "--diff")
    assert checked.rc == 0, checked.tail()
    assert LAY_OUT in checked.changed_tasks(TERMINAL), checked.changed
    assert "+2 system_a 79 MiB at 17 MiB" in checked.out, checked.tail()
    assert digest(spare) == before


def test_with_wipe_the_disk_gets_the_layout_grub_and_the_state_file_system(prepare_lab):
    lab, spare, collections = prepare_lab
    run = prepare(lab, collections, spare, *SMALL, *BIOS, "-e", "p2pfleet_prepare_wipe=true")
    assert run.rc == 0, run.tail()
    assert "No problems found" in subprocess.run(["sgdisk", "--verify", spare], capture_output=True, text=True).stdout
    parts = table(spare)["partitions"]
    assert [p["name"] for p in parts] == ["bios_grub", "boot", "system_a", "system_b", "p2pfleet_state"]
    assert [p["size"] * 512 >> 20 for p in parts] == [1, 16, 78, 78, 16]
    assert parts[0]["type"] == "21686148-6449-6E6F-744E-656564454649"
    boot, slot_a, slot_b, state = (f"{spare}p{n}" for n in (2, 3, 4, 5))
    boot_uuid = str(uuid.uuid5(ANSIBLE_UUID_NAMESPACE, TERMINAL))
    assert subprocess.run(["blkid", "-o", "value", "-s", "UUID", boot], capture_output=True,
                          text=True).stdout.strip() == boot_uuid
    grub_cfg = boot_file(boot, "/grub/grub.cfg").decode()
    assert f"search --no-floppy --set=p2pfleet_bootdev --fs-uuid {boot_uuid}" in grub_cfg
    assert 'menuentry "System A" --id "A" {\n  set root="(${p2pfleet_disk},gpt3)"\n' \
           "  linux /vmlinuz root=PARTLABEL=system_a rw\n" in grub_cfg, grub_cfg
    assert 'set root="(${p2pfleet_disk},gpt4)"\n  linux /vmlinuz root=PARTLABEL=system_b rw\n' in grub_cfg
    assert 'set p2pfleet_default="A"' in grub_cfg
    grubenv = boot_file(boot, "/grub/grubenv")
    assert len(grubenv) == 1024 and grubenv.startswith(b"# GRUB Environment Block\n") and b"=" not in grubenv
    assert "TYPE=ext4" in subprocess.run(["blkid", "-o", "export", state], capture_output=True, text=True).stdout
    assert "LABEL=p2pfleet_state" in subprocess.run(["blkid", "-o", "export", state], capture_output=True,
                                                    text=True).stdout
    for slot in (slot_a, slot_b):           # the old file system is gone; the slots wait for an image
        assert "\nTYPE=" not in subprocess.run(["blkid", "-p", "-o", "export", slot], capture_output=True,
                                               text=True).stdout


def test_a_second_run_changes_nothing(prepare_lab):
    lab, spare, collections = prepare_lab
    before = digest(spare)
    run = prepare(lab, collections, spare, *SMALL, *BIOS)
    assert run.rc == 0, run.tail()
    assert run.recap[TERMINAL]["changed"] == 0, run.changed
    assert digest(spare) == before


def test_the_disk_the_terminal_runs_from_is_left_alone_or_refused(prepare_lab):
    lab, _spare, collections = prepare_lab
    own = lab.state["hosts"][TERMINAL]["disk"]["disk"]
    before = table(own)
    # laid out by the lab as prepare.yml would (boot 16M, state 64M): nothing to do
    run = prepare(lab, collections, own, "-e", "p2pfleet_prepare_boot_size=16M",
                  "-e", "p2pfleet_prepare_state_size=64M")
    assert run.rc == 0, run.tail()
    assert run.recap[TERMINAL]["changed"] == 0, run.changed
    # another layout, even with wipe: refused, as the terminal runs from it
    run = prepare(lab, collections, own, *SMALL, "-e", "p2pfleet_prepare_wipe=true")
    assert run.rc != 0
    assert f"{own}: is or holds the running root file system; refusing to write it" in run.flat(), run.tail()
    assert table(own) == before
