"""A terminal's disk in the collection's layout: one GPT with the boot partition, the slots
and the state partition, each found later by its label (docs/runbook.md).

``inspect`` reads a disk and says what it holds; ``plan`` lays the wanted partitions out on
it; ``decide`` compares the two: a disk already in that layout is left alone, an empty one
is written, and one that holds anything else — a partition table, a file system, any data
where those live — is refused with one line naming what is there, unless the caller asked
to wipe it. A disk that holds the running system or anything mounted is never written.
``write`` writes the table and tells the kernel; ``nodes`` finds (or, with no udev, makes)
the partitions' device nodes.

The table is written here, not by sgdisk or sfdisk: a terminal booted from a small live
system has Python but seldom a partitioning tool.
"""
import fcntl
import os
import stat
import struct
import subprocess
import time
import uuid
import zlib
from dataclasses import dataclass

from .errors import TargetRefused
from .identity import BLKGETSIZE64, GPT_SIGNATURE, read_gpt_table
from .image import _partitions_of, _sysfs, refuse_device_in_use

MIB = 1 << 20
SECTOR = 512
BLKSSZGET = 0x1268
ENTRIES = 128
ENTRY_SIZE = 128
TYPES = {
    "linux": "0fc63daf-8483-4772-8e79-3d69d8477de4",
    "esp": "c12a7328-f81f-11d2-ba4b-00a0c93ec93b",
    "bios_grub": "21686148-6449-6e6f-744e-656564454649",
}
# Where file systems and containers sign themselves: (offset, magic, what it is).
SIGNATURES = (
    (0x438, b"\x53\xef", "an ext2/3/4 file system"),
    (0, b"XFSB", "an XFS file system"),
    (0x10040, b"_BHRfS_M", "a btrfs file system"),
    (3, b"NTFS    ", "an NTFS file system"),
    (0x52, b"FAT32   ", "a FAT file system"),
    (0x36, b"FAT1", "a FAT file system"),
    (0, b"LUKS\xba\xbe", "a LUKS container"),
    (0xff6, b"SWAPSPACE2", "a swap area"),
    (0x8001, b"CD001", "an ISO 9660 image"),
    (0x1000, b"\xfc\x4e\x2b\xa9", "an md RAID member"),
    (0x218, b"LVM2 001", "an LVM physical volume"),
)


class LayoutError(TargetRefused):
    """A disk that cannot be laid out, or is not written as it stands."""


@dataclass(frozen=True)
class Part:
    """One partition of a layout: ``size`` in bytes, 0 for an equal share of what is left."""
    label: str
    size: int
    type: str = "linux"


def parse_parts(items) -> list:
    """``[{label, size, type}]`` (size ``16M``, ``2G`` … or ``rest``) -> [Part]; LayoutError names the bad one."""
    parts, labels = [], set()
    for index, item in enumerate(items or []):
        label = str(item.get("label") or "")
        if not label or len(label) > 36:
            raise LayoutError(f"partitions[{index}]: a label of 1 to 36 characters is needed, got {label!r}")
        if label in labels:
            raise LayoutError(f"partitions[{index}]: two partitions are labelled {label}")
        labels.add(label)
        kind = str(item.get("type") or "linux")
        if kind not in TYPES:
            raise LayoutError(f"partition {label}: type {kind!r} is not one of {', '.join(TYPES)}")
        parts.append(Part(label, _size(label, str(item.get("size") or "rest")), kind))
    if not parts:
        raise LayoutError("partitions: at least one is needed")
    return parts


def _size(label, text):
    if text == "rest":
        return 0
    units = {"M": MIB, "G": 1 << 30, "T": 1 << 40}
    number, unit = text[:-1], text[-1:].upper()
    if unit not in units or not number.isdigit() or int(number) == 0:
        raise LayoutError(f"partition {label}: size {text!r} is not a size like 512M, 2G or 1T, or 'rest'")
    return int(number) * units[unit]


@dataclass(frozen=True)
class Disk:
    path: str
    devno: int
    size: int
    block: int
    entries: tuple  # the GPT's entries (identity.read_gpt_table), () without a GPT
    found: tuple  # what else it holds, in words; () when its table and both ends are blank


def inspect(path: str) -> Disk:
    """Read what a whole disk holds; LayoutError when ``path`` is not one."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise LayoutError(f"{path}: {exc.strerror}") from None
    if not stat.S_ISBLK(st.st_mode):
        raise LayoutError(f"{path}: not a block device")
    if os.path.exists(os.path.join(_sysfs(st.st_rdev), "partition")):
        raise LayoutError(f"{path}: is a partition; name the whole disk")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise LayoutError(f"{path}: cannot open: {exc.strerror}") from None
    try:
        size = struct.unpack("Q", fcntl.ioctl(fd, BLKGETSIZE64, b"\0" * 8))[0]
        block = struct.unpack("i", fcntl.ioctl(fd, BLKSSZGET, b"\0" * 4))[0]
        guid, entries = read_gpt_table(fd, block)
        head = os.pread(fd, min(size, MIB), 0)
        tail = os.pread(fd, min(size, MIB), max(0, size - MIB))
    finally:
        os.close(fd)
    found = []
    if not entries:
        if guid:
            found.append("an empty GPT")
        elif tail[-block:][:8] == GPT_SIGNATURE:
            found.append("a backup GPT")
        mbr = [head[446 + 16 * i:462 + 16 * i] for i in range(4)] if head[510:512] == b"\x55\xaa" else []
        used = [e for e in mbr if e[4] not in (0, 0xEE)]  # 0xEE: a GPT's protective entry
        if used:
            found.append(f"an MBR partition table with {len(used)} partition(s)")
        found += [what for offset, magic, what in SIGNATURES if head[offset:offset + len(magic)] == magic]
        if not found and head.strip(b"\0"):
            found.append("data in its first MiB")
        if not found and tail.strip(b"\0"):
            found.append("data in its last MiB")
    return Disk(path, st.st_rdev, size, block, tuple(entries), tuple(dict.fromkeys(found)))


def plan(disk: Disk, parts) -> list:
    """The wanted partitions on this disk: ``[{number, label, type, first, last}]`` (LBAs,
    inclusive), aligned to MiB, after 1 MiB and before the last MiB (the GPT and its backup)."""
    start, end = MIB, (disk.size - MIB) // MIB * MIB
    fixed = sum(p.size for p in parts)
    shares = sum(1 for p in parts if not p.size)
    share = (end - start - fixed) // shares // MIB * MIB if shares else 0
    if fixed + shares * MIB > end - start:
        wanted = ", ".join(f"{p.label} {_mib(p.size)}" if p.size else f"{p.label} (the rest)" for p in parts)
        raise LayoutError(f"{disk.path}: {_mib(disk.size)} is too small for this layout ({wanted})")
    laid, offset = [], start
    for number, part in enumerate(parts, 1):
        size = part.size or share
        laid.append({"number": number, "label": part.label, "type": TYPES[part.type],
                     "first": offset // disk.block, "last": (offset + size) // disk.block - 1})
        offset += size
    return laid


def decide(disk: Disk, laid: list, wipe: bool) -> bool:
    """Whether the disk must be written (False: it is laid out so already). Refuses a disk in
    use, and a disk that holds anything unless ``wipe``; the line names what is there."""
    now = [{k: e[k] for k in ("number", "label", "type", "first", "last")}
           for e in (dict(e, label=e["name"]) for e in disk.entries)]
    if now == laid:
        return False
    refuse_in_use(disk)
    if wipe:
        return True
    if disk.entries:
        what = describe_entries(disk)
        if [e["label"] for e in now] == [p["label"] for p in laid]:
            what += " in another layout (" + "; ".join(_differences(disk, now, laid)) + ")"
        raise LayoutError(f"{disk.path} holds data ({what}); nothing written: set wipe to erase it")
    if disk.found:
        raise LayoutError(f"{disk.path} holds data ({', '.join(disk.found)}); nothing written: set wipe to erase it")
    return True


def refuse_in_use(disk: Disk) -> None:
    """The running root, a mount, swap, or a device stacked on it (LVM, RAID, dm-crypt)."""
    refuse_device_in_use(disk.path, disk.devno)
    for dev in sorted({disk.devno} | _partitions_of(disk.devno)):
        holders = os.path.join(_sysfs(dev), "holders")
        if os.path.isdir(holders) and os.listdir(holders):
            raise LayoutError(f"{disk.path}: is in use by {', '.join(sorted(os.listdir(holders)))} "
                              "(LVM, RAID or an encrypted volume); nothing written")


def describe_entries(disk: Disk) -> str:
    names = ", ".join(e["name"] or f"#{e['number']}" for e in disk.entries)
    return f"a GPT with {len(disk.entries)} partition(s): {names}"


def _differences(disk, now, laid):
    out = []
    for old, new in zip(now, laid):
        if (old["first"], old["last"]) != (new["first"], new["last"]):
            out.append(f"{old['label']} is {_mib((old['last'] - old['first'] + 1) * disk.block)} at "
                       f"{_mib(old['first'] * disk.block)}, not {_mib((new['last'] - new['first'] + 1) * disk.block)} "
                       f"at {_mib(new['first'] * disk.block)}")
        elif old["type"] != new["type"]:
            out.append(f"{old['label']} has type {old['type']}, not {new['type']}")
    return out


def table(disk: Disk, entries) -> str:
    """One line per partition, for a diff."""
    return "".join(f"{e['number']} {e.get('label', e.get('name'))} {_mib((e['last'] - e['first'] + 1) * disk.block)} "
                   f"at {_mib(e['first'] * disk.block)}\n" for e in entries)


def _mib(size):
    return f"{size / (1 << 30):.1f} GiB" if size >= 1 << 30 else f"{size // MIB} MiB"


def write(disk: Disk, laid: list) -> None:
    """Erase the old signatures (the disk's ends, each new partition's ends) and write the
    GPT: a protective MBR, the header and entries, and their backup at the disk's end."""
    lbas = disk.size // disk.block
    entry_lbas = ENTRIES * ENTRY_SIZE // disk.block
    entries = b"".join(_entry(p) for p in laid).ljust(ENTRIES * ENTRY_SIZE, b"\0")
    disk_guid = uuid.uuid4().bytes_le

    def header(mine, other, entries_at):
        fields = struct.pack("<8sIIIIQQQQ16sQIII", GPT_SIGNATURE, 0x00010000, 92, 0, 0, mine, other,
                             2 + entry_lbas, lbas - 2 - entry_lbas, disk_guid, entries_at, ENTRIES, ENTRY_SIZE,
                             zlib.crc32(entries))
        fields = fields[:16] + struct.pack("<I", zlib.crc32(fields)) + fields[20:]
        return fields.ljust(disk.block, b"\0")

    mbr = bytearray(disk.block)
    mbr[446:462] = struct.pack("<BBBBBBBBII", 0, 0, 2, 0, 0xEE, 0xFF, 0xFF, 0xFF, 1, min(lbas - 1, 0xFFFFFFFF))
    mbr[510:512] = b"\x55\xaa"
    try:
        fd = os.open(disk.path, os.O_RDWR | os.O_CLOEXEC | os.O_EXCL)
    except OSError as exc:
        raise LayoutError(f"{disk.path}: cannot open it alone ({exc.strerror}): something uses it; nothing written") \
            from None
    try:
        zeros = bytes(MIB)
        for part in laid:
            first, end = part["first"] * disk.block, (part["last"] + 1) * disk.block
            for offset in sorted({first, max(first, end - MIB)}):
                os.pwrite(fd, zeros[:min(MIB, end - offset)], offset)
        os.pwrite(fd, zeros, disk.size - MIB)
        os.pwrite(fd, zeros, 0)
        os.pwrite(fd, bytes(mbr), 0)
        os.pwrite(fd, header(1, lbas - 1, 2), disk.block)
        os.pwrite(fd, entries, 2 * disk.block)
        os.pwrite(fd, entries, (lbas - 1 - entry_lbas) * disk.block)
        os.pwrite(fd, header(lbas - 1, 1, lbas - 1 - entry_lbas), (lbas - 1) * disk.block)
        os.fsync(fd)
        _guid, written = read_gpt_table(fd, disk.block)
    finally:
        os.close(fd)
    if [(e["name"], e["first"], e["last"]) for e in written] != [(p["label"], p["first"], p["last"]) for p in laid]:
        raise LayoutError(f"{disk.path}: the table read back is not the one written")
    # Tell the kernel; whether it listened, nodes() checks. The engine has no AnsibleModule
    # (the lab's tests call it directly too): run_command is not there to call.
    try:
        subprocess.run(["partx", "--update", disk.path], check=False, capture_output=True)  # pylint: disable=ansible-bad-function
    except OSError:
        pass


def _entry(part):
    name = part["label"].encode("utf-16-le").ljust(72, b"\0")
    return struct.pack("<16s16sQQQ72s", uuid.UUID(part["type"]).bytes_le, uuid.uuid4().bytes_le,
                       part["first"], part["last"], 0, name)


def nodes(disk: Disk, laid: list, make: bool = True, timeout: float = 10.0) -> list:
    """The device node of each partition, as udev makes it; where no udev runs (a container,
    an initramfs) made here from the kernel's numbers. LayoutError when the kernel does not
    show a partition (``partx`` missing, or the disk held open by something else). Without
    ``make`` (check mode): the nodes that exist, None for the others."""
    if not make:
        names = _kernel_partitions(disk.devno)
        return [os.path.join("/dev", names[p["number"]][0])
                if p["number"] in names and _is_node(os.path.join("/dev", names[p["number"]][0]),
                                                     names[p["number"]][1]) else None for p in laid]
    names = {}
    deadline = time.monotonic() + timeout
    while True:
        names = _kernel_partitions(disk.devno)
        if all(p["number"] in names for p in laid) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    missing = [p["label"] for p in laid if p["number"] not in names]
    if missing:
        raise LayoutError(f"{disk.path}: the kernel shows no partition for {', '.join(missing)} after the table was "
                          "written (run partx --update, or reboot the terminal)")
    udev = os.path.exists("/run/udev/control")
    found = []
    for part in laid:
        name, devno = names[part["number"]]
        node = os.path.join("/dev", name)
        while udev and not _is_node(node, devno) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not _is_node(node, devno):
            if os.path.lexists(node):
                os.unlink(node)
            os.mknod(node, 0o600 | stat.S_IFBLK, devno)
        found.append(node)
    return found


def _kernel_partitions(devno):
    """{partition number: (name, devno)} as the kernel shows them in sysfs."""
    base, found = _sysfs(devno), {}
    for name in os.listdir(base):
        try:
            with open(os.path.join(base, name, "partition"), encoding="ascii") as f:
                number = int(f.read())
            with open(os.path.join(base, name, "dev"), encoding="ascii") as f:
                major, minor = f.read().strip().split(":")
        except (OSError, ValueError):
            continue
        found[number] = (name, os.makedev(int(major), int(minor)))
    return found


def _is_node(node, devno):
    try:
        st = os.stat(node)
    except OSError:
        return False
    return stat.S_ISBLK(st.st_mode) and st.st_rdev == devno
