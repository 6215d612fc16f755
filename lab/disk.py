"""Terminal disks and slot images: sparse files, GPT by partition label, loop devices.

A terminal's disk (one loop device, partitions by label):

    boot            16 MiB  ext4, /boot/grub/grubenv: the GRUB environment the firmware reads
    system_a        slot    the slot booted first: release 1
    system_b        slot    the inactive slot: where a new image goes
    p2pfleet_state  64 MiB  ext4, mounted at /var/lib/p2pfleet whichever slot runs, so the
                            agent's resume data and job records survive slot switches
"""
import fcntl
import os
import random
import re
import tempfile
import time

from .sh import LabError, run

MIB = 1 << 20
BOOT_SIZE = 16 * MIB
STATE_SIZE = 64 * MIB
SLOT_LABELS = {"A": "system_a", "B": "system_b"}
PARTITIONS = ("boot", "system_a", "system_b", "p2pfleet_state")
BLKDISCARD = 0x1277                      # _IO(0x12, 119)
BROKEN_INIT = """#!/bin/sh
echo "lab: this image is broken on purpose: init fails, like a kernel panic" >&2
exit 1
"""


def parse_size(text):
    """'1G', '768M' -> bytes (MiB-aligned)."""
    m = re.fullmatch(r"(\d+)\s*([MG])i?B?", text.strip(), re.I)
    if not m:
        raise LabError(f"bad size {text!r}: use a number with M or G (e.g. 1G, 768M)")
    return int(m.group(1)) * (MIB if m.group(2).upper() == "M" else 1024 * MIB)


def tree_size(path):
    return int(run("du", "-sb", path).split()[0])


def check_slot_size(base, slot_size):
    need = tree_size(base) * 5 // 4 + 64 * MIB    # file system overhead and a little room
    if slot_size < need:
        raise LabError(f"slot size {slot_size // MIB}M is too small for the release image: "
                       f"at least {-(-need // MIB)}M")


def build_image(base, path, release, slot_size, broken=False):
    """An ext4 image file of ``slot_size`` bytes (sparse): the base tree plus /etc/lab-release.

    A broken image has everything but a working init: the boot fails the way a kernel panic
    does, and the firmware falls back.
    """
    if os.path.exists(path):
        return path
    with tempfile.TemporaryDirectory(dir=os.path.dirname(path)) as tmp:
        tree = os.path.join(tmp, "tree")
        run("cp", "-a", base, tree)
        with open(os.path.join(tree, "etc", "lab-release"), "w") as f:
            f.write(f"{release}\n")
        if broken:
            systemd = os.path.join(tree, "usr", "lib", "systemd", "systemd")
            os.remove(systemd)
            with open(systemd, "w") as f:
                f.write(BROKEN_INIT)
            os.chmod(systemd, 0o755)
        image = os.path.join(tmp, "image")
        with open(image, "wb") as f:
            f.truncate(slot_size)
        run("mkfs.ext4", "-q", "-F", "-L", f"release-{release}"[:16], "-d", tree, image)
        os.rename(image, path)
    return path


def upgrade_image(source, path, release, package_mib=8):
    """Release ``release`` made the way an admin makes the next release of a golden image: a
    copy of ``source`` changed in place — /etc/lab-release rewritten and a package of
    ``package_mib`` MiB (pseudo-random, one per release) installed into its free space. The
    rest of the block layout stays where it was, so most pieces equal the source's.
    """
    if os.path.exists(path):
        return path
    with tempfile.TemporaryDirectory(dir=os.path.dirname(path)) as tmp:
        image = os.path.join(tmp, "image")
        run("cp", "--sparse=always", source, image)
        with open(os.path.join(tmp, "release"), "w") as f:
            f.write(f"{release}\n")
        with open(os.path.join(tmp, "package"), "wb") as f:
            f.write(random.Random(f"lab-package-{release}").randbytes(package_mib * MIB))
        commands = os.path.join(tmp, "commands")
        with open(commands, "w") as f:
            f.write(f"rm /etc/lab-release\nwrite {tmp}/release /etc/lab-release\n"
                    f"mkdir /opt/lab-package-{release}\nwrite {tmp}/package /opt/lab-package-{release}/payload.bin\n"
                    f"set_super_value volume_name release-{release}\n")
        run("debugfs", "-w", "-f", commands, image)
        run("e2fsck", "-fn", image)
        os.rename(image, path)
    return path


def images_dir(cache, rootfs_name, slot_size):
    return os.path.join(cache, f"images-{rootfs_name.removeprefix('rootfs-')}-{slot_size // MIB}M")


def ensure_images(base, directory, slot_size, releases=("1", "2")):
    """release-1.img, release-2.img and broken.img for this base and slot size (cached)."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for release in releases:
            build_image(base, os.path.join(directory, f"release-{release}.img"), release, slot_size)
        build_image(base, os.path.join(directory, "broken.img"), "broken", slot_size, broken=True)
    return directory


def make_disk(path, slot_size):
    """A sparse disk file with the GPT above; returns nothing (attach with ``attach``)."""
    size = MIB + BOOT_SIZE + 2 * slot_size + STATE_SIZE + MIB   # + primary and backup GPT
    with open(path, "wb") as f:
        f.truncate(size)
    sizes = (BOOT_SIZE, slot_size, slot_size, STATE_SIZE)
    args = []
    for number, (label, part_size) in enumerate(zip(PARTITIONS, sizes), 1):
        args += [f"--new={number}:0:+{part_size // 1024}K", f"--change-name={number}:{label}"]
    run("sgdisk", "--clear", *args, path)


def attach(path):
    """Loop device for ``path`` with its partitions; returns {'disk': dev, label: partition dev}."""
    dev = run("losetup", "--find", "--show", "--partscan", path).strip()
    # Some kernels (this machine's among them) parse no partition tables themselves: partx
    # reads the GPT in user space and adds the partitions with BLKPG.
    run("partx", "--update", dev)
    parts = {"disk": dev}
    for number, label in enumerate(PARTITIONS, 1):
        parts[label] = f"{dev}p{number}"
    for node in parts.values():
        wait_for_node(node)
    return parts


def wait_for_node(node, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not os.path.exists(node):
        if time.monotonic() > deadline:
            raise LabError(f"{node} did not appear within {timeout:.0f} s (partition scan)")
        time.sleep(0.05)


def loops_backed_by(directory):
    """Loop devices whose backing file lies under ``directory`` (only ours, whoever else runs)."""
    found = []
    for name in os.listdir("/sys/block"):
        try:
            backing = open(f"/sys/block/{name}/loop/backing_file").read().strip()
        except OSError:
            continue
        if backing.removesuffix(" (deleted)").startswith(directory.rstrip("/") + "/"):
            found.append(f"/dev/{name}")
    return found


def write_image(image, device):
    """Write ``image`` into partition ``device``: discard it, then copy only the image's data.

    Discarding makes the loop device punch holes into the disk file, so unwritten ranges read
    back as zeros exactly as in the image, and a slot costs disk space only for its data.
    """
    size = os.path.getsize(image)
    with open(device, "r+b", buffering=0) as dst:
        dev_size = dst.seek(0, os.SEEK_END)
        if size > dev_size:
            raise LabError(f"image {image} ({size // MIB}M) is larger than {device} ({dev_size // MIB}M)")
        fcntl.ioctl(dst, BLKDISCARD, (0).to_bytes(8, "little") + dev_size.to_bytes(8, "little"))
        with open(image, "rb") as src:
            fd = src.fileno()
            offset = 0
            while True:
                try:
                    offset = os.lseek(fd, offset, os.SEEK_DATA)
                except OSError:           # ENXIO: no data after offset
                    break
                end = os.lseek(fd, offset, os.SEEK_HOLE)
                dst.seek(offset)
                while offset < end:
                    chunk = os.pread(fd, min(8 * MIB, end - offset), offset)
                    dst.write(chunk)
                    offset += len(chunk)
        os.fsync(dst.fileno())


def format_boot(device, mountpoint):
    """ext4 with an empty GRUB environment block saying: boot A."""
    run("mkfs.ext4", "-q", "-F", "-L", "boot", device)
    run("mount", device, mountpoint)
    os.makedirs(os.path.join(mountpoint, "grub"), exist_ok=True)
    env = os.path.join(mountpoint, "grub", "grubenv")
    run("grub-editenv", env, "create")
    run("grub-editenv", env, "set", "saved_entry=A")


def format_state(device, mountpoint):
    run("mkfs.ext4", "-q", "-F", "-L", "p2pfleet_state", device)
    run("mount", device, mountpoint)
