"""Delta transfer: the pieces a host already holds never cross the network.

Before a fetch joins its swarm, every piece of the new image is looked for on the host
itself, cheapest first:

1. **kept** — already correct in the target: the slot's *ledger* entry says it holds an
   image with the same piece at the same index, and nothing has touched the slot since
   (its sampled fingerprint is the one recorded when that image was verified). Nothing is
   read or written. With no usable ledger entry, an optional *in-place check* reads the
   target piece by piece and keeps what matches; in ``auto`` mode it goes on only while
   the disk reads faster than the link would deliver, and gives up on a target that
   matches nothing.
2. **zero** — a piece of all zeros (known from its hash) is filled locally: the kernel's
   zero-out on a block device, a punched hole in a file, written zeros elsewhere.
3. **copied** — the same content in another slot whose ledger names the image it holds
   (the running slot, usually release N), at any offset, found by piece hash. It is read,
   its SHA-1 checked against the new manifest, and only then written.

Every piece taken locally is proved against the new manifest before it counts: a copy by
its SHA-1 before it is written, a kept piece by the recorded manifest's hash and the
slot's fingerprint, and all of them again by the whole-image digest that gates the
switch. A drifted or corrupted source costs a fetch of that piece, never a wrong byte.

The fetch then joins the swarm with what it found as its bitfield: it downloads only the
rest, and serves every piece it holds to the other terminals.
"""
import ctypes
import ctypes.util
import errno
import fcntl
import hashlib
import logging
import os
import stat
import struct
import time
from dataclasses import dataclass

from .errors import Cancelled, ImageError
from .metainfo import Manifest, zero_piece_hash
from .slots import still_clean

log = logging.getLogger("p2pfleet.delta")

CHECK_MODES = ("auto", "always", "never")
DEFAULT_LINK_RATE = 125_000_000  # 1 Gbit/s: what a terminal's link delivers, for the in-place check
# The auto in-place check measures itself over this much before judging, and gives up on
# a target with no matching piece after this many pieces.
CHECK_PROBE_BYTES = 64 << 20
CHECK_PROBE_SECONDS = 1.0
CHECK_GIVE_UP_PIECES = 256
BLKZEROOUT = 0x127F
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 0x01, 0x02
ZERO_CHUNK = 4 << 20
# Zeroing is cut into runs of at most this much, with a look at the cancel flag between them.
ZERO_RUN = 256 << 20


# -- looking for pieces locally --------------------------------------------------------
@dataclass
class LocalResult:
    """What the host already had: the new image's pieces found locally, by kind."""

    have: list  # one bool per piece of the new image
    kept_bytes: int = 0
    zero_bytes: int = 0
    copied_bytes: int = 0
    rejected_pieces: int = 0  # local candidates whose SHA-1 did not match: fetched instead
    checked_bytes: int = 0  # read by the in-place check
    notes: tuple = ()

    @property
    def local_bytes(self) -> int:
        return self.kept_bytes + self.zero_bytes + self.copied_bytes


class _Progress:
    def __init__(self, cancel, report):
        self.cancel, self.report = cancel, report

    def __call__(self, result):
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled()
        if self.report:
            self.report(result)


def find_local(manifest: Manifest, target: str, identity: dict, target_entry=None, sources=(),
               check_target: str = "auto", link_rate: int = DEFAULT_LINK_RATE, cancel=None,
               progress=None, io_path: str = None) -> LocalResult:
    """Fill ``target`` (written at ``io_path``, its claim's held path, when given) with every
    piece of ``manifest`` this host already has.

    ``target_entry``: the target slot's ledger entry (or None); ``sources``: ledger entries
    of other slots to copy from. Returns what was found; the pieces in ``have`` are in the
    target when this returns (written and flushed).
    """
    if check_target not in CHECK_MODES:
        raise ValueError(f"check_target must be one of {', '.join(CHECK_MODES)}")
    hashes = manifest.piece_hashes()
    count, size, piece = manifest.piece_count, manifest.image_size, manifest.piece_size
    result = LocalResult(have=[False] * count)
    notes = []
    tick = _Progress(cancel, progress)

    def length(index):
        return min(piece, size - index * piece)

    # 1. Kept, by the ledger.
    trusted = target_entry is not None and _kept(target_entry, identity, io_path, hashes, piece, length, result,
                                                 notes)
    fd = _open_target(io_path or target, target)
    try:
        # 2. Zero pieces.
        _zeros(fd, hashes, piece, size, length, result, tick)

        # 3. The in-place check, where no clean ledger vouches for the target.
        if check_target == "always" or (check_target == "auto" and not trusted):
            _check_in_place(fd, hashes, piece, length, result, check_target, link_rate, tick, notes)

        # 4. Copies from other slots, by piece hash.
        wanted = {}
        for index in range(count):
            if not result.have[index]:
                wanted.setdefault(hashes[index], []).append(index)
        if wanted:
            for entry in sources:
                _copy_from(entry, fd, target, wanted, hashes, piece, length, result, tick, notes)
        os.fsync(fd)
    except OSError as exc:
        raise ImageError(f"{target}: writing local pieces failed: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    result.notes = tuple(notes)
    return result


def _kept(target_entry, identity, io_path, hashes, piece, length, result, notes) -> bool:
    """Mark the pieces the target's clean ledger entry vouches for; whether it could be trusted."""
    why_not = still_clean(target_entry, identity, io_path)
    if not why_not and target_entry.manifest.piece_size != piece:
        why_not = "its image has another piece size"
    if why_not:
        notes.append(f"target's ledger ({target_entry.name}) not used: {why_not}")
        return False
    old = target_entry.manifest.piece_hashes()
    for index in range(min(len(hashes), len(old))):
        # The last piece of a shorter old image may be short: equal hashes mean equal length.
        if old[index] == hashes[index]:
            result.have[index] = True
            result.kept_bytes += length(index)
    return True


def _zeros(fd, hashes, piece, size, length, result, tick) -> None:
    """Fill the zero pieces not had yet, in runs of at most ``ZERO_RUN``."""
    count = len(hashes)
    zero = {index for index in range(count) if not result.have[index] and hashes[index] == zero_piece_hash(length(index))}
    step = max(1, ZERO_RUN // piece)
    for first, end in _runs(sorted(zero)):
        for start in range(first, end, step):
            stop = min(end, start + step)
            tick(result)
            _zero_out(fd, start * piece, min(stop * piece, size) - start * piece)
            for index in range(start, stop):
                result.have[index] = True
                result.zero_bytes += length(index)


def _open_target(io_path, path):
    try:
        return os.open(io_path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise ImageError(f"{path}: cannot open to write local pieces: {exc.strerror}") from None


def _runs(indexes):
    """Consecutive runs of sorted indexes as ``(first, end)``."""
    first = end = None
    for index in indexes:
        if first is not None and index == end:
            end += 1
            continue
        if first is not None:
            yield first, end
        first, end = index, index + 1
    if first is not None:
        yield first, end


def _zero_out(fd, offset, length) -> None:
    """Make ``length`` bytes at ``offset`` read as zeros, without writing them where possible."""
    mode = os.fstat(fd).st_mode
    aligned = length - length % 512
    if stat.S_ISBLK(mode) and aligned and offset % 512 == 0:
        try:
            fcntl.ioctl(fd, BLKZEROOUT, struct.pack("QQ", offset, aligned))
            offset, length = offset + aligned, length - aligned
        except OSError as exc:
            # Not offered here (or the device is held open exclusively): write the zeros.
            if exc.errno not in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL, errno.EBUSY):
                raise
    elif stat.S_ISREG(mode) and _fallocate is not None:
        if _fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) == 0:
            return
    zeros = bytes(min(ZERO_CHUNK, length))
    while length > 0:
        n = min(len(zeros), length)
        _write_all(fd, zeros[:n], offset)
        offset, length = offset + n, length - n


def _write_all(fd, data, offset) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _load_fallocate():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = getattr(libc, "fallocate64", None) or libc.fallocate
        fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        return fn
    except (OSError, AttributeError):
        return None


_fallocate = _load_fallocate()


def _check_in_place(fd, hashes, piece, length, result, mode, link_rate, tick, notes) -> None:
    started, read, matched, looked = time.monotonic(), 0, 0, 0
    for index, digest in enumerate(hashes):
        if result.have[index]:
            continue
        tick(result)
        try:
            data = os.pread(fd, length(index), index * piece)
        except OSError as exc:
            notes.append(f"in-place check stopped at piece {index}: {exc.strerror or exc}")
            return
        read += len(data)
        looked += 1
        result.checked_bytes += len(data)
        if hashlib.sha1(data).digest() == digest:
            result.have[index] = True
            result.kept_bytes += len(data)
            matched += 1
        if mode != "auto":
            continue
        elapsed = time.monotonic() - started
        if read >= CHECK_PROBE_BYTES and elapsed >= CHECK_PROBE_SECONDS and read / elapsed < link_rate:
            notes.append(f"in-place check stopped after {read >> 20} MiB: the disk read "
                         f"{read / elapsed / 1e6:.0f} MB/s, slower than the link ({link_rate / 1e6:.0f} MB/s)")
            return
        if not matched and looked >= CHECK_GIVE_UP_PIECES:
            notes.append(f"in-place check stopped: none of the first {looked} pieces matched")
            return


def _copy_from(entry, fd, target, wanted, hashes, piece, length, result, tick, notes) -> None:
    old = entry.manifest
    if old.piece_size != piece:
        notes.append(f"{entry.path}: its image ({entry.name}) has another piece size; not used as a source")
        return
    try:
        src = os.open(entry.path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        notes.append(f"{entry.path}: cannot read ({exc.strerror}); not used as a source")
        return
    copied = rejected = 0
    try:
        try:
            src_size = os.lseek(src, 0, os.SEEK_END)
        except OSError as exc:
            notes.append(f"{entry.path}: cannot read ({exc.strerror}); not used as a source")
            return
        plan = []
        for old_index, digest in enumerate(old.piece_hashes()):
            targets = wanted.get(digest)
            if targets:
                plan.append((old_index, digest))
        for old_index, digest in plan:
            targets = wanted.get(digest)
            if not targets:
                continue  # taken by an earlier candidate
            tick(result)
            src_offset = old_index * old.piece_size
            want = length(targets[0])
            if src_offset + want > src_size:
                continue
            try:
                data = os.pread(src, want, src_offset)
            except OSError as exc:
                notes.append(f"{entry.path}: reading stopped ({exc.strerror or exc}); the rest comes from the swarm")
                break
            if hashlib.sha1(data).digest() != digest:
                rejected += 1
                result.rejected_pieces += 1
                continue
            for index in targets:  # a write error is the target's: it ends the job
                _write_all(fd, data, index * piece)
                result.have[index] = True
                result.copied_bytes += len(data)
                copied += 1
            del wanted[digest]
    finally:
        os.close(src)
    if rejected:
        notes.append(f"{entry.path}: {rejected} pieces did not match their hash there (the slot changed "
                     "since it was verified); fetched from the swarm instead")
    log.info("%s: %d pieces copied from %s (%s)", target, copied, entry.path, entry.name)
