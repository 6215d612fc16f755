"""Boot safety outside the playbook's flow (issue 17, section 4), in the engine, on real parts:
loop disks with a GPT, the three boot backends driving their real tools (the helpers of
test_boot_backends), and the slot running now played by the device '/' is on.

- A label or UUID on two partitions is an error naming both, even where udev's link names one.
- ``check_change``: ``confirmed`` only for the slot booted now (unless forced); ``next`` and
  ``confirmed`` never for a slot whose partition is missing.
- ``refuse_fallback_target``: no writer gets the slot a boot falls back to, or the slot running
  now; every refusal leaves the boot environment and the slots' bytes as they were.
"""
import hashlib
import os
import subprocess

import pytest

from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine import boot
from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.boot import BootError
from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.errors import TargetRefused
from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.slots import SlotError, resolve_slots
from test_boot_backends import ENTRIES, efi, grub, uboot
from test_target_refusals import _running_root_device

MIB = 1 << 20


def digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def definitions(labels, entries=("A", "B")):
    return [{"name": name, "partlabel": label, "boot_entry": entry}
            for name, label, entry in zip("AB", labels, entries)]


def boot_files(backend):
    """Every byte of a backend's boot environment, to compare before and after a refusal."""
    if backend.name == "grub":
        paths = [backend.grubenv, backend.default_cfg]
    elif backend.name == "efi":
        store = backend.env["EFIVARFS_PATH"]
        paths = [os.path.join(store, name) for name in sorted(os.listdir(store))]
    else:
        with open(backend.config, encoding="ascii") as f:
            paths = [f.read().split()[0]]
    return {path: digest(path) for path in paths if os.path.exists(path)}


def settings_of(backend, monkeypatch):
    """The agent's boot settings that reach the same environment as ``backend``."""
    if backend.name == "grub":
        return {"backend": "grub", "grubenv": backend.grubenv}
    if backend.name == "efi":
        monkeypatch.setenv("EFIVARFS_PATH", backend.env["EFIVARFS_PATH"])
        return {"backend": "efi"}
    return {"backend": "uboot", "uboot_config": backend.config}


# --- a label on two partitions ------------------------------------------------------------------

def test_a_label_on_a_cloned_disk_is_an_error_naming_both_partitions(gpt_disks):
    disk, parts, labels = gpt_disks()
    found = resolve_slots(definitions(labels))
    assert [s.device for s in found] == parts

    clone, clone_parts, _ = gpt_disks(clone_of=disk)
    with pytest.raises(SlotError) as err:
        resolve_slots(definitions(labels))
    message = str(err.value)
    assert message.startswith(f"slot A: partlabel {labels[0]!r} is on 2 partitions"), message
    assert parts[0] in message and clone_parts[0] in message and "\n" not in message

    # The clone carries the same partition UUIDs too.
    part_uuid = subprocess.run(["sfdisk", "--part-uuid", disk, "2"], capture_output=True, text=True,
                               check=True).stdout.strip().lower()
    by_uuid = [{"name": "A", "device": parts[0]}, {"name": "B", "partuuid": part_uuid}]
    with pytest.raises(SlotError, match=f"slot B: partuuid '{part_uuid}' is on 2 partitions, "
                                        f"{parts[1]} and {clone_parts[1]}"):
        resolve_slots(by_uuid)


def test_udevs_link_to_one_of_two_labelled_partitions_does_not_hide_the_other(gpt_disks):
    """/dev/disk/by-partlabel names one of the two (the one udev probed last); the GPT scan
    finds the other."""
    disk, parts, labels = gpt_disks()
    _clone, clone_parts, _ = gpt_disks(clone_of=disk)
    link_dir = "/dev/disk/by-partlabel"
    made_dir = not os.path.isdir(link_dir)
    os.makedirs(link_dir, exist_ok=True)
    link = os.path.join(link_dir, labels[1])
    os.symlink(clone_parts[1], link)
    try:
        with pytest.raises(SlotError, match=f"slot B: partlabel {labels[1]!r} is on 2 partitions, "
                                            f"{parts[1]} and {clone_parts[1]}"):
            resolve_slots([{"name": "A", "device": parts[0]}, {"name": "B", "partlabel": labels[1]}])
    finally:
        os.unlink(link)
        if made_dir:
            os.removedirs(link_dir)


# --- which changes of the boot environment are refused ------------------------------------------

def test_confirming_a_slot_that_is_not_running_is_refused_unless_forced(gpt_disks):
    _disk, parts, labels = gpt_disks()
    slots = definitions(labels)
    with pytest.raises(BootError) as err:
        boot.check_change(slots, "B", "confirmed")
    assert str(err.value).startswith("slot B: not confirmed, as it is not the slot booted now (no slot holds the "
                                     "running root file system)"), err.value
    assert "force: true" in str(err.value)
    assert boot.check_change(slots, "B", "confirmed", force=True).device == parts[1]
    assert boot.check_change(slots, "B", "next").device == parts[1]

    root = _running_root_device()
    if root is None:
        pytest.skip("'/' is not on a block device with a /dev node: no slot can be the running one here")
    running = [{"name": "A", "device": root}, slots[1]]
    assert boot.check_change(running, "A", "confirmed").booted
    with pytest.raises(BootError, match=r"slot B: not confirmed, .*\(the running system is slot A\)"):
        boot.check_change(running, "B", "confirmed")


def test_a_slot_whose_partition_is_missing_is_refused_for_next_and_confirmed_not_for_rejected(gpt_disks):
    _disk, parts, labels = gpt_disks()
    slots = [definitions(labels)[0], {"name": "B", "device": "/dev/p2pfleet-no-such-slot"}]
    for state in ("next", "confirmed"):
        with pytest.raises(SlotError, match="slot B: device /dev/p2pfleet-no-such-slot does not exist"):
            boot.check_change(slots, "B", state, force=True)
    # Dropping a pending try of a vanished slot is what makes its terminal safe again.
    assert boot.check_change(slots, "B", "rejected") is None


# --- the slot a terminal falls back to is never written -----------------------------------------

@pytest.mark.parametrize("make", [grub, efi, uboot], ids=["grub", "efi", "uboot"])
def test_the_fallback_slot_is_refused_to_any_writer_and_the_other_one_is_not(tmp_path, gpt_disks, monkeypatch, make):
    backend = make(tmp_path)
    a, b = ENTRIES[backend.name]
    disk, parts, labels = gpt_disks()
    slots = definitions(labels, (a, b))
    settings = settings_of(backend, monkeypatch)
    where = {"grub": "GRUB saved_entry", "efi": "EFI BootOrder", "uboot": "U-Boot p2pfleet_default"}[backend.name]
    link = tmp_path / "slot-a"
    link.symlink_to(parts[0])

    def refused(path, words):
        env, data = boot_files(backend), [digest(p) for p in parts]
        with pytest.raises(TargetRefused) as err:
            boot.refuse_fallback_target(str(path), slots, settings)
        assert words in str(err.value) and "\n" not in str(err.value), err.value
        assert boot_files(backend) == env, "a refusal changed the boot environment"
        assert [digest(p) for p in parts] == data

    refused(parts[0], f"{parts[0]}: is slot A, the slot this terminal falls back to ({where}); refusing to write it")
    refused(link, f"{link}: is slot A, the slot this terminal falls back to")  # the device, not the name
    refused(disk, f"{disk}: holds slot A, the slot this terminal falls back to")
    boot.refuse_fallback_target(parts[1], slots, settings)
    boot.refuse_fallback_target(str(tmp_path / "not-a-slot.img"), slots, settings)

    # B tried once: still A is where a failed try lands. B confirmed: now B is kept.
    backend.try_next(b)
    refused(parts[0], "is slot A, the slot this terminal falls back to")
    boot.refuse_fallback_target(parts[1], slots, settings)
    backend.confirm(b)
    refused(parts[1], f"{parts[1]}: is slot B, the slot this terminal falls back to ({where})")
    boot.refuse_fallback_target(parts[0], slots, settings)


def test_grub_keeps_the_default_files_slot_and_the_first_slot_without_one(tmp_path, gpt_disks):
    """GRUB's fallback entry is p2pfleet-default.cfg's slot (the first slot when there is no
    such file): a saved entry that cannot load ends there, so it is kept as well."""
    backend = grub(tmp_path)
    _disk, parts, labels = gpt_disks()
    slots, settings = definitions(labels), {"backend": "grub", "grubenv": backend.grubenv}
    subprocess.run(["grub-editenv", backend.grubenv, "set", "saved_entry=B"], check=True)
    with pytest.raises(TargetRefused, match="is slot B, the slot this terminal falls back to \\(GRUB saved_entry\\)"):
        boot.refuse_fallback_target(parts[1], slots, settings)
    with pytest.raises(TargetRefused, match="is slot A, the slot this terminal falls back to "
                                            "\\(GRUB p2pfleet-default.cfg\\)"):
        boot.refuse_fallback_target(parts[0], slots, settings)
    os.unlink(backend.default_cfg)
    with pytest.raises(TargetRefused, match="GRUB's first slot, as no p2pfleet-default.cfg names one"):
        boot.refuse_fallback_target(parts[0], slots, settings)


def test_what_cannot_be_told_is_refused(tmp_path, gpt_disks):
    backend = grub(tmp_path)
    _disk, parts, labels = gpt_disks()
    slots, settings = definitions(labels), {"backend": "grub", "grubenv": backend.grubenv}
    subprocess.run(["grub-editenv", backend.grubenv, "set", "saved_entry=gnulinux-simple"], check=True)
    with pytest.raises(TargetRefused, match=f"{parts[1]}: is slot B, and which slot this terminal falls back to "
                                            "cannot be told \\(GRUB saved_entry is 'gnulinux-simple', which is no "
                                            "slot's boot entry \\(A, B\\)\\)"):
        boot.refuse_fallback_target(parts[1], slots, settings)
    boot.refuse_fallback_target(str(tmp_path / "not-a-slot.img"), slots, settings)  # no slot, nothing to tell

    missing = [slots[0], {"name": "B", "partlabel": "p2pfleet-no-such-" + labels[1]}]
    with pytest.raises(TargetRefused, match=f"{parts[1]}: cannot tell whether it is a slot this terminal boots "
                                            "\\(slot B: no partition has partlabel"):
        boot.refuse_fallback_target(parts[1], missing, settings)
    with pytest.raises(TargetRefused, match="falls back to cannot be told"):
        boot.refuse_fallback_target(parts[1], slots, {"backend": "efi"})  # no UEFI variables on this machine


def test_the_slot_running_now_is_refused(tmp_path, gpt_disks):
    root = _running_root_device()
    if root is None:
        pytest.skip("'/' is not on a block device with a /dev node: no slot can be the running one here")
    backend = grub(tmp_path)
    _disk, parts, labels = gpt_disks()
    slots = [{"name": "A", "device": root}, definitions(labels)[1]]
    backend.confirm("B")  # even when it is not the default
    with pytest.raises(TargetRefused, match=f"{root}: is slot A, the slot running now \\(it holds the running root "
                                            "file system\\); refusing to write it"):
        boot.refuse_fallback_target(root, slots, {"backend": "grub", "grubenv": backend.grubenv})


def test_a_loop_device_over_the_fallback_slots_bytes_is_refused_and_one_over_the_other_slot_is_not(
        tmp_path, gpt_disks):
    """Another name for the same bytes: a loop device over the slot's range of the disk's file."""
    backend = grub(tmp_path)
    disk, parts, labels = gpt_disks()
    slots, settings = definitions(labels), {"backend": "grub", "grubenv": backend.grubenv}
    sysfs = f"/sys/block/{os.path.basename(disk)}"
    with open(f"{sysfs}/loop/backing_file", encoding="utf-8") as f:
        backing = f.read().strip()
    aliases = []
    try:
        for part in parts:
            with open(f"{sysfs}/{os.path.basename(part)}/start", encoding="ascii") as f:
                start = int(f.read()) * 512
            with open(f"{sysfs}/{os.path.basename(part)}/size", encoding="ascii") as f:
                size = int(f.read()) * 512
            aliases.append(subprocess.run(["losetup", "--find", "--show", "--offset", str(start), "--sizelimit",
                                           str(size), backing], check=True, capture_output=True,
                                          text=True).stdout.strip())
        with pytest.raises(TargetRefused, match=f"{aliases[0]}: holds slot A, the slot this terminal falls back to"):
            boot.refuse_fallback_target(aliases[0], slots, settings)
        boot.refuse_fallback_target(aliases[1], slots, settings)
    finally:
        for alias in aliases:
            subprocess.run(["losetup", "-d", alias], capture_output=True)
