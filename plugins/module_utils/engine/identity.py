"""What makes a target *the* device a job checked: its identity, read once and compared.

A path is only a name. ``/dev/disk/by-partlabel/system_b`` is a symlink that udev may point
elsewhere, a device node can be made again for another device, and after a crash a loop
device number can be given to another backing file. A job therefore resolves its target
once, writes and reads it only through the descriptor it holds (``image.Target``), and keeps
the target's identity in its record; a restart takes a target up again only when every part
of the identity matches.

The identity of a block device is made of what stays the same across reboots: its device
number and size, for a partition its number, start and GPT partition GUID, the GUID of the
disk it is on, and for a loop device (or a partition of one) the file behind it and the
offset into that file. A device node's inode number changes at every boot and is left out.
"""
import fcntl
import os
import stat
import struct
import uuid

BLKGETSIZE64 = 0x80081272
SECTOR = 512
GPT_SIGNATURE = b"EFI PART"
# Each part of an identity, in the words of the one line that says it changed.
WHAT = {
    "kind": "kind", "dev": "device number", "ino": "inode", "size": "size", "part_number": "partition number",
    "part_start": "partition start", "part_uuid": "partition GUID", "disk_guid": "disk GUID",
    "loop_file": "file behind the loop device", "loop_offset": "loop device offset",
}


def of_fd(path: str, fd: int) -> dict:
    """The identity of what ``fd`` (an open descriptor of ``path``) is."""
    st = os.fstat(fd)
    if not stat.S_ISBLK(st.st_mode):
        return {"path": path, "kind": "file", "dev": st.st_dev, "ino": st.st_ino, "size": st.st_size}
    found = {"path": path, "kind": "device", "dev": st.st_rdev, "ino": 0, "size": _size(fd)}
    found.update(_block_facts(st.st_rdev))
    return found


def of_path(path: str) -> dict:
    """The identity of what ``path`` names now (opened read-only just to read it)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        return of_fd(path, fd)
    finally:
        os.close(fd)


def same_object(identity: dict, path: str) -> bool:
    """Whether ``path`` still names the object of ``identity`` (a cheap ``stat``: a job's
    target is watched with it while the job runs)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    if identity.get("kind") == "device":
        return stat.S_ISBLK(st.st_mode) and st.st_rdev == identity.get("dev")
    return stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) == (identity.get("dev"), identity.get("ino"))


def describe(identity: dict) -> str:
    """A short name for the object of an identity: ``device 7:3`` or ``file 2049/1234``."""
    dev = identity.get("dev") or 0
    if identity.get("kind") == "device":
        return f"device {os.major(dev)}:{os.minor(dev)}"
    return f"file {dev}/{identity.get('ino')}"


def difference(recorded: dict, now: dict) -> str:
    """``""`` when two identities are the same target, else what changed, in words."""
    if not isinstance(recorded, dict):
        return "no identity was recorded for it"
    for key in WHAT:
        if recorded.get(key) != now.get(key):
            if key == "dev":
                return f"it was {describe(recorded)}, it is {describe(now)} now"
            return f"its {WHAT[key]} was {_shown(recorded.get(key))}, it is {_shown(now.get(key))} now"
    return ""


def _shown(value) -> str:
    return "unknown" if value in (None, "") else str(value)


def _size(fd: int) -> int:
    buf = fcntl.ioctl(fd, BLKGETSIZE64, b"\0" * 8)
    return struct.unpack("Q", buf)[0]


def _sysfs(devno: int) -> str:
    return f"/sys/dev/block/{os.major(devno)}:{os.minor(devno)}"


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            return f.read().strip()
    except OSError:
        return ""


def _block_facts(devno: int) -> dict:
    base = _sysfs(devno)
    facts = {"part_number": None, "part_start": None, "part_uuid": "", "disk_guid": "", "loop_file": None,
             "loop_offset": None}
    disk_base = base
    if os.path.exists(os.path.join(base, "partition")):
        facts["part_number"] = _int(_read(os.path.join(base, "partition")))
        facts["part_start"] = _int(_read(os.path.join(base, "start")))
        disk_base = os.path.realpath(os.path.join(base, ".."))
    loop = os.path.join(disk_base, "loop")
    if os.path.isdir(loop):
        try:
            backing = os.stat(_read(os.path.join(loop, "backing_file")))
            facts["loop_file"] = [backing.st_dev, backing.st_ino]
        except OSError:
            facts["loop_file"] = None  # its file was deleted: nothing else can reach it
        facts["loop_offset"] = _int(_read(os.path.join(loop, "offset")))
    disk_guid, entries = _gpt(disk_base)
    facts["disk_guid"] = disk_guid
    if facts["part_start"] is not None:
        facts["part_uuid"] = entries.get(facts["part_start"], "")
    return facts


def _int(text):
    try:
        return int(text)
    except ValueError:
        return None


def _gpt(disk_base: str) -> tuple:
    """``(disk GUID, {start sector: partition GUID})`` from a disk's GPT, or ``("", {})``.

    Read through the disk's node in /dev; a host without one (a container given only the
    partition) has an identity without the GUIDs, which is still compared whole.
    """
    name = os.path.basename(disk_base)
    try:
        block = int(_read(os.path.join(disk_base, "queue", "logical_block_size")) or SECTOR)
        fd = os.open(os.path.join("/dev", name), os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except (OSError, ValueError):
        return "", {}
    try:
        st = os.fstat(fd)
        if not stat.S_ISBLK(st.st_mode) or _sysfs(st.st_rdev) != _sysfs_of(disk_base):
            return "", {}  # /dev/<name> is not this disk: tell nothing rather than something wrong
        disk_guid, entries = read_gpt(fd, block)
    except OSError:
        return "", {}
    finally:
        os.close(fd)
    return disk_guid, {start * block // SECTOR: part_uuid for start, _name, part_uuid in entries}


def read_gpt(fd: int, block: int) -> tuple:
    """``(disk GUID, [(first LBA, partition name, partition GUID), ...])`` of the GPT on the
    disk open as ``fd`` (logical blocks of ``block`` bytes); ``("", [])`` without one."""
    disk_guid, entries = read_gpt_table(fd, block)
    return disk_guid, [(e["first"], e["name"], e["guid"]) for e in entries]


def read_gpt_table(fd: int, block: int) -> tuple:
    """``(disk GUID, entries)``: every used entry of the GPT as a dict with ``number`` (from
    1), ``first`` and ``last`` LBA (inclusive), ``type`` and ``guid`` (lower case) and
    ``name``; ``("", [])`` without a GPT."""
    header = os.pread(fd, SECTOR, block)
    if header[:8] != GPT_SIGNATURE:
        return "", []
    disk_guid = str(uuid.UUID(bytes_le=header[56:72]))
    entries_lba, count, size = struct.unpack_from("<QII", header, 72)
    if not 0 < count <= 1024 or not 128 <= size <= 4096:
        return disk_guid, []
    table = os.pread(fd, count * size, entries_lba * block)
    found = []
    for i in range(count):
        raw = table[i * size:(i + 1) * size]
        if len(raw) < 128 or raw[:16] == bytes(16):
            continue
        first, last = struct.unpack_from("<QQ", raw, 32)
        found.append({"number": i + 1, "first": first, "last": last, "type": str(uuid.UUID(bytes_le=raw[:16])),
                      "guid": str(uuid.UUID(bytes_le=raw[16:32])),
                      "name": raw[56:128].decode("utf-16-le", errors="replace").split("\0", 1)[0]})
    return disk_guid, found


def _sysfs_of(disk_base: str) -> str:
    numbers = _read(os.path.join(disk_base, "dev"))
    return f"/sys/dev/block/{numbers}"
