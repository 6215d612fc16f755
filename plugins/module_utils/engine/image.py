"""What an image or a target is, and every refusal that protects a terminal.

An *image* is the bytes of a system partition. It lives either in a regular file or in a
raw block device (a partition such as ``/dev/sda2``). Reading one is harmless; writing one
is the most dangerous thing this project does, so a target is *claimed* before libtorrent
may touch it: the claim checks what the target is, refuses anything that could lose data,
and holds an exclusive descriptor on a device for the whole job. Holding it open keeps the
kernel from flushing and dropping the device cache each time libtorrent closes its own
handle (about 4x faster measured), and ``O_EXCL`` makes the kernel refuse a device that is
mounted or claimed by anything else.
"""
import errno
import fcntl
import mmap
import os
import queue
import stat
import struct
import threading
import time
from dataclasses import dataclass

from . import identity as ident
from .errors import ImageError, TargetRefused

BLKGETSIZE64 = 0x80081272
SECTOR = 512
READ_SIZE = 8 << 20
BLKFLSBUF = 0x1261  # _IO(0x12, 97)
DIRECT_ALIGN = 4096


@dataclass(frozen=True)
class ImageInfo:
    """A regular file or block device holding (or about to hold) an image."""

    path: str
    kind: str  # "file" or "device"
    size: int
    dev: int  # st_rdev for a device, st_dev for a file
    ino: int
    mtime_ns: int

    @property
    def is_device(self) -> bool:
        return self.kind == "device"


def probe(path: str) -> ImageInfo:
    """Describe an existing image source. Raises ImageError naming the problem."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file or device") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot stat: {exc.strerror}") from None
    if stat.S_ISBLK(st.st_mode):
        return ImageInfo(path, "device", device_size(path), st.st_rdev, st.st_ino, st.st_mtime_ns)
    if stat.S_ISREG(st.st_mode):
        return ImageInfo(path, "file", st.st_size, st.st_dev, st.st_ino, st.st_mtime_ns)
    raise ImageError(f"{path}: not a regular file or block device")


def device_size(path: str) -> int:
    """Size in bytes of a block device (st_size of a device node is 0)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        # A device we may not open (the running root, under some confinement) still has
        # a size in sysfs.
        try:
            return _sysfs_size(os.stat(path).st_rdev)
        except OSError:
            raise ImageError(f"{path}: cannot open device: {exc.strerror}") from None
    try:
        buf = fcntl.ioctl(fd, BLKGETSIZE64, b"\0" * 8)
        return struct.unpack("Q", buf)[0]
    except OSError:
        return _sysfs_size(os.fstat(fd).st_rdev)
    finally:
        os.close(fd)


def _sysfs_size(rdev: int) -> int:
    path = f"/sys/dev/block/{os.major(rdev)}:{os.minor(rdev)}/size"
    with open(path, encoding="ascii") as f:
        return int(f.read()) * SECTOR


def _devno(text: str) -> int:
    major, minor = text.split(":")
    return os.makedev(int(major), int(minor))


def _sysfs(devno: int) -> str:
    return f"/sys/dev/block/{os.major(devno)}:{os.minor(devno)}"


def _loop_backing(devno: int):
    """``(path, stat)`` of the file or device behind a loop device, or None."""
    try:
        with open(os.path.join(_sysfs(devno), "loop", "backing_file"), encoding="utf-8",
                  errors="surrogateescape") as f:
            backing = f.read().rstrip("\n")
        return backing, os.stat(backing)
    except OSError:
        return None  # not a loop device, or its file was deleted (nothing else can reach it)


def backing_files(devno: int) -> dict:
    """The regular files below a device, by ``(st_dev, st_ino)``: the files behind the
    loop devices it is, is a partition of, or is stacked on."""
    found = {}
    for dev in _related_devices(devno):
        backing = _loop_backing(dev)
        if backing is not None and stat.S_ISREG(backing[1].st_mode):
            found[(backing[1].st_dev, backing[1].st_ino)] = backing[0]
    return found


def _file_ranges(devno: int) -> dict:
    """``{(st_dev, st_ino): (start, end)}``: the bytes of the file behind a loop device (or a
    partition of one) that the device shows; empty for anything else."""
    base = _sysfs(devno)
    try:
        start, disk = 0, devno
        if os.path.exists(os.path.join(base, "partition")):
            with open(os.path.join(base, "start"), encoding="ascii") as f:
                start = int(f.read()) * SECTOR
            with open(os.path.join(base, "..", "dev"), encoding="ascii") as f:
                disk = _devno(f.read().strip())
        with open(os.path.join(base, "size"), encoding="ascii") as f:
            size = int(f.read()) * SECTOR
        with open(os.path.join(_sysfs(disk), "loop", "offset"), encoding="ascii") as f:
            offset = int(f.read())
    except (OSError, ValueError):
        return {}
    backing = _loop_backing(disk)
    if backing is None or not stat.S_ISREG(backing[1].st_mode):
        return {}
    return {(backing[1].st_dev, backing[1].st_ino): (offset + start, offset + start + size)}


def _related_devices(devno: int) -> set:
    """The device itself, the whole disk it is a partition of, and everything below it
    (device-mapper/md slaves, the block device behind a loop device)."""
    seen, todo = set(), [devno]
    while todo:
        dev = todo.pop()
        if dev in seen:
            continue
        seen.add(dev)
        base = _sysfs(dev)
        backing = _loop_backing(dev)
        if backing is not None and stat.S_ISBLK(backing[1].st_mode):
            todo.append(backing[1].st_rdev)
        if os.path.exists(os.path.join(base, "partition")):
            parent = os.path.realpath(os.path.join(base, ".."))
            try:
                with open(os.path.join(parent, "dev"), encoding="ascii") as f:
                    todo.append(_devno(f.read().strip()))
            except OSError:
                pass
        slaves = os.path.join(base, "slaves")
        if os.path.isdir(slaves):
            for name in os.listdir(slaves):
                try:
                    with open(os.path.join(slaves, name, "dev"), encoding="ascii") as f:
                        todo.append(_devno(f.read().strip()))
                except OSError:
                    pass
    return seen


def _mounts(mountinfo: str = "/proc/self/mountinfo"):
    """Yield ``(device numbers, mount point)`` for every mount.

    A mount names its device twice: the number in field 3, and the source after " - ".
    btrfs, overlay and friends report an anonymous number (0:NN), so the source, when it
    is a block device, is the one that names the real partition.
    """
    with open(mountinfo, encoding="utf-8", errors="replace") as f:
        for line in f:
            fields = line.split()
            if len(fields) < 5:
                continue
            devices = set()
            try:
                devices.add(_devno(fields[2]))
            except ValueError:
                pass
            if " - " in line:
                after = line.split(" - ", 1)[1].split()
                if len(after) >= 2 and after[1].startswith("/dev/"):
                    try:
                        st = os.stat(after[1].replace("\\040", " "))
                        if stat.S_ISBLK(st.st_mode):
                            devices.add(st.st_rdev)
                    except OSError:
                        pass
            yield devices, fields[4].replace("\\040", " ")


def _mountinfo_devices(mountinfo: str = "/proc/self/mountinfo") -> dict:
    """Map of device number -> first mount point, for every mounted block device."""
    mounted = {}
    for devices, mount_point in _mounts(mountinfo):
        for dev in devices:
            mounted.setdefault(dev, mount_point)
    return mounted


def _swap_devices() -> set:
    devices = set()
    try:
        with open("/proc/swaps", encoding="utf-8") as f:
            next(f, None)
            for line in f:
                name = line.split()[0]
                try:
                    st = os.stat(name)
                except OSError:
                    continue
                if stat.S_ISBLK(st.st_mode):
                    devices.add(st.st_rdev)
    except OSError:
        pass
    return devices


def running_root_devices() -> set:
    """Every block device the running root file system lives on, directly or below it."""
    roots = {os.stat("/").st_dev}
    for devices, mount_point in _mounts():
        if mount_point == "/":
            roots |= devices
    related = set()
    for dev in roots:
        related |= _related_devices(dev)
    return related


def _partitions_of(devno: int) -> set:
    """Partitions of a whole disk (empty for a partition or a disk without any)."""
    base = _sysfs(devno)
    found = set()
    if not os.path.isdir(base):
        return found
    for name in os.listdir(base):
        dev_file = os.path.join(base, name, "dev")
        if os.path.exists(os.path.join(base, name, "partition")):
            with open(dev_file, encoding="ascii") as f:
                found.add(_devno(f.read().strip()))
    return found


def overlaps(path_a: str, path_b: str) -> bool:
    """Whether writing one path could change the bytes of the other.

    The same file; the same device; a device and a partition or device-mapper volume
    stacked on it; a loop device (or a partition of one) and the file behind it, or two
    loop devices over the same bytes of one file. Two partitions of one disk (a loop disk
    too) do not overlap.
    """
    try:
        a, b = os.stat(path_a), os.stat(path_b)
    except OSError:
        return os.path.abspath(path_a) == os.path.abspath(path_b)
    if stat.S_ISBLK(a.st_mode) and stat.S_ISBLK(b.st_mode):
        if a.st_rdev in _related_devices(b.st_rdev) or b.st_rdev in _related_devices(a.st_rdev):
            return True
        ranges_a, ranges_b = _file_ranges(a.st_rdev), _file_ranges(b.st_rdev)
        if ranges_a and ranges_b:
            # Partitions of one loop disk share its file but not its bytes.
            return any(key in ranges_b and ranges_a[key][0] < ranges_b[key][1] and ranges_b[key][0] < ranges_a[key][1]
                       for key in ranges_a)
        return bool(backing_files(a.st_rdev).keys() & backing_files(b.st_rdev).keys())
    if stat.S_ISREG(a.st_mode) and stat.S_ISREG(b.st_mode):
        return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
    if stat.S_ISBLK(a.st_mode) and stat.S_ISREG(b.st_mode):
        return (b.st_dev, b.st_ino) in backing_files(a.st_rdev)
    if stat.S_ISREG(a.st_mode) and stat.S_ISBLK(b.st_mode):
        return (a.st_dev, a.st_ino) in backing_files(b.st_rdev)
    return False


def _lock(fd: int, write: bool, start: int = 0, end: int = None) -> bool:
    """Take a byte-range lock of the open file description ``fd`` (to the end of the file
    when ``end`` is None); False when another description holds a conflicting one.

    Open-file-description locks, unlike POSIX record locks, conflict within one process too
    (the agent runs every job of a host), and unlike flock they cover ranges: two partitions
    of one loop disk lock two ranges of its file and do not clash.
    """
    kind = fcntl.F_WRLCK if write else fcntl.F_RDLCK
    request = struct.pack("hhqqi4x", kind, os.SEEK_SET, start, 0 if end is None else end - start, 0)
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, request)
        return True
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise


def _lock_backing_files(path: str, devno: int) -> list:
    """Lock the bytes of the files behind a loop device target as a file target is locked,
    so a file being seeded (shared lock) or written by another job is refused through its
    loop device too. Returns the descriptors holding the locks."""
    fds = []
    ranges = _file_ranges(devno)
    try:
        for key, backing in backing_files(devno).items():
            try:
                fd = os.open(backing, os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
            except OSError:
                continue
            fds.append(fd)
            if not _lock(fd, True, *ranges.get(key, (0, None))):
                raise TargetRefused(f"{path}: is a loop device over {backing}, which another job is seeding "
                                    "or writing; choose another target") from None
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return fds


def check_device_target(path: str, devno: int, size: int, needed: int) -> None:
    """Refuse a device target that is the running root, mounted, swap, or too small."""
    refuse_device_in_use(path, devno)
    refuse_too_small(path, size, needed)


def refuse_device_in_use(path: str, devno: int) -> None:
    """Refuse a device that is the running root, mounted or swap; needs no access to it."""
    family = {devno} | _partitions_of(devno)
    if family & running_root_devices():
        raise TargetRefused(f"{path}: is or holds the running root file system; refusing to write it")
    mounted = _mountinfo_devices()
    for dev in sorted(family):
        if dev in mounted:
            raise TargetRefused(f"{path}: is mounted (on {mounted[dev]}); unmount it first")
    if family & _swap_devices():
        raise TargetRefused(f"{path}: is in use as swap; swapoff it first")


EXTENDED_TYPES = (0x05, 0x0F, 0x85)


def refuse_partition_table(path: str, devno: int) -> None:
    """Refuse a disk whose partition table the kernel uses, and an extended partition.

    Writing either destroys partitions: the disk's first sectors hold the table, and an
    extended partition's first sector is the EBR chaining its logical partitions.
    """
    parts = _partitions_of(devno)
    if parts:
        names = ", ".join(sorted(_name_of(d) for d in parts))
        raise TargetRefused(f"{path}: is a whole disk with partitions ({names}); write one partition, "
                            "not the disk")
    if _is_extended_partition(devno):
        raise TargetRefused(f"{path}: is an extended partition (it holds the table of the logical "
                            "partitions); write a logical or primary partition instead")


def _name_of(devno: int) -> str:
    return os.path.basename(os.path.realpath(_sysfs(devno)))


def _is_extended_partition(devno: int) -> bool:
    base = _sysfs(devno)
    if not os.path.exists(os.path.join(base, "partition")):
        return False
    try:
        with open(os.path.join(base, "start"), encoding="ascii") as f:
            start = int(f.read())
        disk = os.path.basename(os.path.realpath(os.path.join(base, "..")))
        fd = os.open(f"/dev/{disk}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            mbr = os.pread(fd, SECTOR, 0)
        finally:
            os.close(fd)
    except (OSError, ValueError):
        return False
    if len(mbr) < SECTOR or mbr[510:512] != b"\x55\xaa":
        return False
    for entry in range(4):
        raw = mbr[446 + 16 * entry: 462 + 16 * entry]
        if raw[4] in EXTENDED_TYPES and struct.unpack_from("<I", raw, 8)[0] == start:
            return True
    return False


def refuse_too_small(path: str, size: int, needed: int) -> None:
    if size < needed:
        raise TargetRefused(
            f"{path}: device holds {size} bytes but the image needs {needed}; "
            "choose a larger partition"
        )


def _refuse_loop_backing(path: str, st) -> None:
    """Refuse an image file that backs a loop device: it may be mounted through it."""
    try:
        names = os.listdir("/sys/block")
    except OSError:
        return
    for name in names:
        backing = os.path.join("/sys/block", name, "loop", "backing_file")
        try:
            with open(backing, encoding="utf-8", errors="replace") as f:
                backing_path = f.read().strip()
            other = os.stat(backing_path)
        except OSError:
            continue
        if (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
            raise TargetRefused(f"{path}: is attached to /dev/{name}; detach it (losetup -d) first")


def held_path(fd: int) -> str:
    """The path through which ``fd``'s own file is opened again, whatever its name means now.

    libtorrent and the verify pass open a target by path for every access; given this path,
    each access reaches the very device or file the claim checked and holds, even when the
    name the administrator gave is retargeted, re-made or given to another device meanwhile.
    """
    return f"/proc/self/fd/{fd}"


_RETIRED = []  # (descriptor number kept on /dev/null, when)
_RETIRED_LOCK = threading.Lock()
# Far longer than libtorrent ever takes to finish an I/O it had queued for a removed torrent.
RETIRED_KEEP = 600.0


def retire_fd(fd: int) -> None:
    """Close what ``fd`` holds but keep its number taken, on /dev/null, for a while.

    A held path (``held_path``) names a descriptor *number*. An access that libtorrent had
    queued before its torrent was taken out may still open it; it must find /dev/null there,
    never the file that the next ``open`` in this process would get under that number.
    """
    now = time.monotonic()
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        os.dup2(null, fd)  # atomically: the device (and its O_EXCL) is let go, the number stays taken
    finally:
        os.close(null)
    with _RETIRED_LOCK:
        _RETIRED.append((fd, now))
        while _RETIRED and now - _RETIRED[0][1] > RETIRED_KEEP:
            os.close(_RETIRED.pop(0)[0])


class Target:
    """A claimed place to write an image. Use as a context manager around the whole job.

    ``claim_target`` has already refused anything dangerous; while the claim is held the
    target stays open in this process (a device exclusively), ``identity`` says what it is,
    and every access goes through ``io_path``, which reaches that object and nothing else.
    """

    def __init__(self, info: ImageInfo, fd: int, created: bool = False, path: str = None, holds=(),
                 identity: dict = None):
        self.info = info
        self._fd = fd
        self._holds = list(holds)  # locks on the files behind a loop device target
        self.created = created
        self._path = path
        self.identity = identity

    @property
    def path(self) -> str:
        return self.info.path if self.info is not None else self._path

    @property
    def io_path(self) -> str:
        if self._fd is None:
            raise ImageError(f"{self.path}: the claim on it was released")
        return held_path(self._fd)

    def open(self, flags: int) -> int:
        """A new descriptor of the held object (e.g. read-write, or for a loop device)."""
        try:
            return os.open(self.io_path, flags | os.O_CLOEXEC)
        except OSError as exc:
            raise ImageError(f"{self.path}: cannot open: {exc.strerror}") from None

    def renamed(self, strict: bool = False) -> str:
        """Why the target's name no longer names the held object, or ``""``. A name that is
        gone for a moment (udev making a link again) counts only when ``strict``."""
        if self.identity is None or ident.same_object(self.identity, self.path):
            return ""
        try:
            now = ident.describe(ident.of_path(self.path))
        except OSError as exc:
            if not strict:
                return ""
            now = f"nothing ({exc.strerror.lower()})"
        return (f"{self.path}: now names {now}, not the {ident.describe(self.identity)} this job checked "
                "and holds; stopped, nothing was written anywhere else")

    def sync(self) -> None:
        """Flush written data to stable storage; buffered write errors surface here."""
        try:
            os.fsync(self._fd)
        except (OSError, TypeError) as exc:
            raise ImageError(f"{self.path}: flushing written data failed: "
                             f"{getattr(exc, 'strerror', None) or 'the claim was released'}") from None

    def release(self) -> None:
        if self._fd is not None:
            retire_fd(self._fd)
            self._fd = None
        for fd in self._holds:
            os.close(fd)
        self._holds = []

    def discard(self) -> None:
        """Release the claim and remove the file the claim created (nothing else)."""
        self.release()
        if self.created:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            self.created = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def claim_target(path: str, needed: int, require_device: bool = False, protect=(), private_dirs=()) -> Target:
    """Check ``path`` can safely receive an image of ``needed`` bytes and claim it.

    A path under ``/dev/`` (or any path when ``require_device``) must already be a block
    device: a typo there would otherwise become a regular file in RAM. A regular-file
    target is created if missing and grown to the image size (an image file may grow;
    a partition cannot), never shrunk. ``protect`` names files the job itself reads — its
    manifest and torrent — and ``private_dirs`` directories whose files are never targets
    (the agent's state directory); both are refused before anything is written.

    The checks are made on what the claim opened, not on the name: a name that changes
    meaning between the check and the open is refused, and the returned claim's
    ``io_path`` reaches the checked object for as long as the claim is held.
    """
    path = os.path.abspath(path)
    _refuse_own_files(path, protect, private_dirs)
    # realpath, not the spelling: "//dev/sdb" or a symlink into /dev is still /dev.
    require_device = require_device or os.path.realpath(path).startswith("/dev/")
    st = _stat_target(path)
    if st is not None and stat.S_ISBLK(st.st_mode):
        return _claim_device(path, st, needed, private_dirs)
    _refuse_file_target(path, st, require_device)
    return _claim_file(path, st, needed, private_dirs)


def _refuse_own_files(path: str, protect, private_dirs) -> None:
    """Refuse a target that is, or would overwrite, a file the job reads or keeps."""
    for own in protect:
        if own and overlaps(path, own):
            what = "is" if os.path.realpath(path) == os.path.realpath(own) else "would overwrite"
            raise TargetRefused(f"{path}: {what} {own}, which this job reads; choose another target")
    for private in private_dirs:
        refuse_inside(path, private)


def _stat_target(path: str):
    """``os.stat`` of the target, or None when there is nothing there yet."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise TargetRefused(f"{path}: cannot stat: {exc.strerror}") from None


def _claim_device(path: str, st, needed: int, private_dirs) -> Target:
    """Claim the block device ``st`` describes; the checks run on the descriptor then held."""
    # In-use checks first: the running root is refused without even being opened.
    refuse_device_in_use(path, st.st_rdev)
    fd = _open_device(path)
    holds = []
    try:
        opened = os.fstat(fd)
        if not stat.S_ISBLK(opened.st_mode) or opened.st_rdev != st.st_rdev:
            raise TargetRefused(f"{path}: changed while it was being checked (now "
                                f"{ident.describe(ident.of_fd(path, fd))}); try again")
        for private in private_dirs:
            refuse_private_backing(path, st.st_rdev, private)
        refuse_partition_table(path, st.st_rdev)
        identity = ident.of_fd(path, fd)
        refuse_too_small(path, identity["size"], needed)
        holds = _lock_backing_files(path, st.st_rdev)
    except BaseException:
        os.close(fd)
        for held in holds:
            os.close(held)
        raise
    info = ImageInfo(path, "device", identity["size"], st.st_rdev, st.st_ino, st.st_mtime_ns)
    return Target(info, fd, holds=holds, identity=identity)


def _open_device(path: str) -> int:
    """An exclusive descriptor of a device target; the kernel refuses one in use."""
    try:
        return os.open(path, os.O_RDONLY | os.O_EXCL | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            raise TargetRefused(f"{path}: device is busy (mounted, or seeded or written by another "
                                "program)") from None
        raise TargetRefused(f"{path}: cannot open device: {exc.strerror}") from None


def _refuse_file_target(path: str, st, require_device: bool) -> None:
    """The checks on a file target's name, made before it is opened (or created)."""
    if require_device:
        what = "does not exist" if st is None else "is not a block device"
        raise TargetRefused(f"{path}: {what}; a device target must be an existing block device")
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise TargetRefused(f"{path}: not a regular file or block device")
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        raise TargetRefused(f"{path}: directory {parent} does not exist")
    if st is not None:
        _refuse_loop_backing(path, st)


def _claim_file(path: str, st, needed: int, private_dirs) -> Target:
    """Claim the regular file ``st`` describes, or create it when ``st`` is None."""
    created = st is None
    fd = _open_file(path, st, created, private_dirs)
    # Locked so two fetch jobs cannot write the same image file at once.
    if not _lock(fd, True):
        os.close(fd)
        raise TargetRefused(f"{path}: another job is seeding or writing this file")
    st = _grow_file(path, fd, created, needed)
    info = ImageInfo(path, "file", st.st_size, st.st_dev, st.st_ino, st.st_mtime_ns)
    return Target(info, fd, created, identity=ident.of_fd(path, fd))


def _open_file(path: str, st, created: bool, private_dirs) -> int:
    """A read-write descriptor of the file target, checked to be the file ``st`` describes."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT | os.O_EXCL if created else 0), 0o600)
    except OSError as exc:
        raise TargetRefused(f"{path}: cannot open for writing: {exc.strerror}") from None
    try:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode) or (
                not created and (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino)):
            raise TargetRefused(f"{path}: changed while it was being checked; try again")
        for private in private_dirs:
            refuse_private_file(path, opened, private)
    except BaseException:
        Target(None, fd, created, path).discard()
        raise
    return fd


def _grow_file(path: str, fd: int, created: bool, needed: int):
    """Grow the held file to ``needed`` bytes (never shrink it); its ``os.fstat`` after."""
    try:
        st = os.fstat(fd)
        if st.st_size < needed:
            os.ftruncate(fd, needed)
            st = os.fstat(fd)
    except OSError as exc:
        # EFBIG (a file size limit, FAT's 4 GiB), ENOSPC, EDQUOT: the file is left as it
        # was, and one this claim created is removed.
        Target(None, fd, created, path).discard()
        raise TargetRefused(f"{path}: cannot grow the file to the image size of {needed} bytes: "
                            f"{exc.strerror}") from None
    return st


def refuse_inside(path: str, directory: str) -> None:
    """Refuse a target that is, or is inside, ``directory`` (followed through symlinks)."""
    real, private = os.path.realpath(path), os.path.realpath(directory)
    if real == private or real.startswith(private.rstrip("/") + "/"):
        raise TargetRefused(f"{path}: is inside the agent's state directory {directory} (its job records, "
                            "manifests and resume data); choose another target")


def _files_in(directory: str) -> dict:
    found = {}
    for root, _dirs, names in os.walk(directory):
        for name in names:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                found[(st.st_dev, st.st_ino)] = os.path.join(root, name)
    return found


def refuse_private_file(path: str, st, directory: str) -> None:
    """Refuse a file target that is one of ``directory``'s files under another name (a hard link)."""
    own = _files_in(directory).get((st.st_dev, st.st_ino))
    if own:
        raise TargetRefused(f"{path}: is {own} of the agent's state directory under another name; "
                            "choose another target")


def refuse_private_backing(path: str, devno: int, directory: str) -> None:
    """Refuse a loop device target over a file of ``directory``."""
    own = backing_files(devno).keys() & _files_in(directory).keys()
    if own:
        raise TargetRefused(f"{path}: is a loop device over {backing_files(devno)[min(own)]}, a file of the "
                            "agent's state directory; choose another target")


def open_source(path: str) -> tuple:
    """Open an image to seed it; returns ``(fd, ImageInfo)``. The caller closes fd.

    The descriptor keeps writers out for as long as it is open: a device is opened with
    ``O_EXCL`` (the kernel then refuses to mount it, and our own target claims fail on
    it), a file holds a shared lock that a target claim's exclusive lock cannot get.
    """
    info = probe(path)
    flags = os.O_RDONLY | os.O_CLOEXEC | (os.O_EXCL if info.is_device else 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            raise ImageError(f"{path}: device is busy (mounted, or written by another program); "
                             "seed an unmounted partition") from None
        raise ImageError(f"{path}: cannot open for reading: {exc.strerror}") from None
    if not info.is_device:
        if not _lock(fd, False):
            os.close(fd)
            raise ImageError(f"{path}: another job is writing this file")
    return fd, info


LOOP_CTL_GET_FREE = 0x4C82
LOOP_CONFIGURE = 0x4C0A
LO_FLAGS_READ_ONLY, LO_FLAGS_AUTOCLEAR = 1, 4
# struct loop_config: u32 fd, u32 block_size, struct loop_info64 (232 bytes), u64 reserved[8].
# In loop_info64: lo_offset at 24, lo_sizelimit at 32, lo_flags at 52, lo_file_name[64] at 56.
_LOOP_CONFIG = struct.Struct("=II24xQQ12xI64s112x64x")


class SliceMap:
    """The paths libtorrent opens for each file of a torrent laid over one image.

    ``io_path`` is the held path of the job's own descriptor of the image (its claim): every
    path handed out here leads to what that descriptor holds, never to what a name means later.
    A single-file torrent maps onto the image itself. A split image (virtual files at
    offsets) maps each file onto a loop device that shows exactly that slice of the
    image, so every write lands at its offset in the one partition without a custom
    storage in libtorrent (the Python binding cannot take one). Each loop device is bound
    to the job's descriptor itself (``LOOP_CONFIGURE``), not to a path, and set to clear
    itself when its last user closes it; this map holds them open: a killed job leaves no
    loop device behind.
    """

    def __init__(self, path: str, files, read_only: bool, io_path: str):
        self.path = os.path.abspath(path)
        self._fds = []
        if len(files) == 1:
            self.paths = [io_path]
            return
        self.paths = []
        try:
            backing = os.open(io_path, (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC)
        except OSError as exc:
            raise ImageError(f"{self.path}: cannot open to map its slices: {exc.strerror}") from None
        try:
            for vf in files:
                self._fds.append(self._attach(backing, vf.offset, vf.size, read_only))
                self.paths.append(held_path(self._fds[-1]))
        except BaseException:
            self.release()
            raise
        finally:
            os.close(backing)  # each loop device keeps its own reference to the image

    def _attach(self, backing, offset, size, read_only) -> int:
        flags = LO_FLAGS_AUTOCLEAR | (LO_FLAGS_READ_ONLY if read_only else 0)
        config = _LOOP_CONFIG.pack(backing, 0, offset, size, flags, os.fsencode(self.path)[-63:])
        for _attempt in range(16):
            try:
                control = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
                try:
                    number = fcntl.ioctl(control, LOOP_CTL_GET_FREE)
                finally:
                    os.close(control)
                fd = os.open(f"/dev/loop{number}", (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC)
            except OSError as exc:
                raise ImageError(f"{self.path}: cannot map a slice at {offset}: no free loop device "
                                 f"({exc.strerror})") from None
            try:
                fcntl.ioctl(fd, LOOP_CONFIGURE, config)
                return fd
            except OSError as exc:
                os.close(fd)
                if exc.errno != errno.EBUSY:  # EBUSY: another program took it first; take the next
                    raise ImageError(f"{self.path}: cannot map a slice at {offset}: {exc.strerror}") from None
        raise ImageError(f"{self.path}: cannot map a slice at {offset}: every free loop device was taken first")

    def drop_caches(self) -> None:
        """Forget what the slices' own page caches hold (``BLKFLSBUF``): the image was
        written directly, under them."""
        for fd in self._fds:
            os.fsync(fd)
            fcntl.ioctl(fd, BLKFLSBUF)

    def sync(self) -> None:
        """Push what libtorrent wrote through the slices down into the image.

        Each loop device has its own page cache; until it is flushed, reading the image
        directly shows the old bytes.
        """
        for fd in self._fds:
            os.fsync(fd)

    def release(self) -> None:
        for fd in self._fds:
            retire_fd(fd)
        self._fds = []


def read_blocks(path: str, size: int, block: int = READ_SIZE, depth: int = 4):
    """Yield ``(offset, buffer)`` blocks covering exactly the first ``size`` bytes of ``path``.

    A reader thread keeps ``depth`` blocks ahead so the disk and the hashing overlap.
    A block device is read with O_DIRECT: buffered reads of a partition crawl at the
    mercy of its small read-ahead (a loop partition here: 250 MB/s buffered, 2 GB/s
    direct), and a 256 GB pass would evict everything else from the page cache. The
    kernel writes dirty cached pages back before a direct read, so nothing is missed.
    """
    fd, direct = _open_for_streaming(path)
    if not direct:
        os.posix_fadvise(fd, 0, size, os.POSIX_FADV_SEQUENTIAL)
    blocks = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def reader():
        offset = 0
        try:
            while offset < size and not stop.is_set():
                want = min(block, size - offset)
                data = _read_exact(fd, want, offset, direct, path, size)
                blocks.put((offset, data))
                offset += want
            blocks.put(None)
        except (OSError, ImageError) as exc:
            blocks.put(exc)

    thread = threading.Thread(target=reader, name="p2pfleet-read", daemon=True)
    thread.start()
    try:
        while True:
            item = blocks.get()
            if item is None:
                return
            if isinstance(item, ImageError):
                raise item
            if isinstance(item, OSError):
                raise ImageError(f"{path}: read failed: {item.strerror}")
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                blocks.get_nowait()
            except queue.Empty:
                thread.join(0.05)
        os.close(fd)


def _open_for_streaming(path):
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise ImageError(f"{path}: cannot open for reading: {exc.strerror}") from None
    if not stat.S_ISBLK(os.fstat(fd).st_mode):
        return fd, False
    try:
        direct = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_DIRECT)
    except OSError:
        return fd, False
    os.close(fd)
    return direct, True


def _read_exact(fd, want, offset, direct, path, size):
    """``want`` bytes at ``offset``; O_DIRECT needs aligned lengths and aligned memory."""
    if direct:
        aligned = -(-want // DIRECT_ALIGN) * DIRECT_ALIGN
        buf = mmap.mmap(-1, aligned)  # page-aligned, as O_DIRECT requires
        got = os.preadv(fd, [buf], offset)
        if got < want:
            raise ImageError(f"{path}: ends at byte {offset + got}, expected {size} bytes")
        return memoryview(buf)[:want]
    data = os.pread(fd, want, offset)
    while len(data) < want:
        more = os.pread(fd, want - len(data), offset + len(data))
        if not more:
            raise ImageError(f"{path}: ends at byte {offset + len(data)}, expected {size} bytes")
        data += more
    return data
