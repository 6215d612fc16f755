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
import json
import logging
import os
import stat
import struct
import time
from dataclasses import dataclass

from .errors import Cancelled, ImageError, ManifestError, StateError, TargetRefused
from .files import ensure_private_dir, read_capped, write_atomic
from .identity import difference as identity_difference
from .image import refuse_device_in_use
from .metainfo import Manifest, fingerprint, zero_piece_hash

log = logging.getLogger("p2pfleet.delta")

LEDGER_FORMAT = 1
CLEAN, CHANGED = "clean", "changed"
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


# -- the ledger ------------------------------------------------------------------------
@dataclass
class LedgerEntry:
    """What the agent knows a slot holds: the image of ``manifest``, clean or changed since."""

    path: str
    identity: dict
    info_hash: str
    name: str
    state: str
    why: str
    recorded: float
    fingerprint: dict
    manifest: Manifest

    @property
    def clean(self) -> bool:
        return self.state == CLEAN

    def as_dict(self) -> dict:
        return {"path": self.path, "name": self.name, "info_hash": self.info_hash, "state": self.state,
                "why": self.why, "recorded": self.recorded}


class Ledger:
    """``<state_dir>/slots/``: one entry per slot a fetch has written, with its manifest.

    Written when a fetch verifies a slot; marked *changed* the moment a fetch starts
    writing into it (a crash halfway leaves it changed, never falsely clean).
    """

    def __init__(self, state_dir: str):
        self.dir = ensure_private_dir(os.path.join(state_dir, "slots"), error=StateError)

    def _key(self, path: str) -> str:
        return hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:20]

    def _file(self, path: str, suffix: str) -> str:
        return os.path.join(self.dir, self._key(path) + suffix)

    def record(self, path: str, identity: dict, manifest: Manifest, fingerprint_now: dict) -> None:
        """``path`` now holds ``manifest``'s image, proved by its digest; ``fingerprint_now``
        is the slot's ``slot_fingerprint`` read right after the proof."""
        manifest.copy_to(self.dir, self._key(path), error=StateError)
        self._write(path, {"path": os.path.abspath(path), "identity": identity, "info_hash": manifest.info_hash,
                           "name": manifest.name, "state": CLEAN, "why": "verified", "recorded": time.time(),
                           "fingerprint": fingerprint_now})

    def mark_changed(self, path: str, why: str) -> None:
        data = self._read(path)
        if data is not None and data.get("state") != CHANGED:
            data.update(state=CHANGED, why=why, recorded=time.time())
            self._write(path, data)

    def forget(self, path: str) -> None:
        """Remove the entry of ``path`` (best effort: a failure is logged)."""
        for suffix in (".json", ".manifest.json", ".torrent"):
            try:
                os.unlink(self._file(path, suffix))
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.error("%s: cannot remove: %s", self._file(path, suffix), exc.strerror)

    def _write(self, path, data) -> None:
        write_atomic(self._file(path, ".json"), json.dumps(dict(data, format=LEDGER_FORMAT)).encode(), mode=0o600,
                     error=StateError)

    def _read(self, path):
        return self._read_file(self._file(path, ".json"))

    @staticmethod
    def _read_file(file):
        if not os.path.exists(file):
            return None
        try:
            data = json.loads(read_capped(file, 1 << 20, "slot ledger entry", error=StateError))
        except (ValueError, StateError) as exc:
            log.warning("%s: unreadable slot ledger entry ignored: %s", file, exc)
            return None
        if not isinstance(data, dict) or data.get("format") != LEDGER_FORMAT:
            log.warning("%s: not a slot ledger entry of this version; ignored", file)
            return None
        return data

    def entry(self, path: str):
        """The entry of ``path`` with its manifest, or None (missing, unreadable, or stale)."""
        data = self._read(path)
        if data is None:
            return None
        try:
            manifest = Manifest.load(self._file(path, ".manifest.json"))
            if manifest.info_hash != data["info_hash"]:
                raise ValueError(f"its manifest is {manifest.info_hash}, not {data['info_hash']}")
            return LedgerEntry(path=data["path"], identity=data["identity"], info_hash=data["info_hash"],
                               name=data["name"], state=data["state"], why=str(data.get("why", "")),
                               recorded=float(data["recorded"]), fingerprint=data.get("fingerprint") or {},
                               manifest=manifest)
        except (ManifestError, KeyError, TypeError, ValueError) as exc:
            log.warning("slot ledger entry of %s ignored: %s", path, exc)
            return None

    def note_in_use(self) -> None:
        """Mark ``changed`` every slot in use right now: mounted, the running root, swap.
        (The agent calls this when it starts: a slot booted read-write is found at once.)"""
        for entry in self.entries():
            if not entry.clean:
                continue
            try:
                st = os.stat(entry.path)
                if stat.S_ISBLK(st.st_mode):
                    refuse_device_in_use(entry.path, st.st_rdev)
            except TargetRefused as exc:
                self.mark_changed(entry.path, str(exc).split(": ", 1)[-1].split(";")[0])
            except (OSError, ImageError, ValueError) as exc:
                # Cannot tell: the entry stays as it is (its fingerprint still guards it).
                log.warning("%s: cannot tell whether the slot is in use: %s", entry.path, exc)

    def entries(self) -> list:
        found = []
        for name in sorted(os.listdir(self.dir)):
            if name.endswith(".json") and not name.endswith(".manifest.json"):
                data = self._read_file(os.path.join(self.dir, name))
                # A slot that is gone (an image file removed) is not loaded.
                if data and isinstance(data.get("path"), str) and os.path.exists(data["path"]):
                    entry = self.entry(data["path"])
                    if entry is not None:
                        found.append(entry)
        return found


def slot_fingerprint(path) -> dict:
    """The slot's fingerprint (``metainfo.fingerprint``), or ``{}`` when it cannot be read."""
    try:
        return fingerprint(path)
    except (OSError, ImageError):
        return {}


def still_clean(entry: LedgerEntry, identity: dict, io_path: str = None) -> str:
    """``""`` when ``entry`` can be trusted for its slot as it is now (read at ``io_path``,
    its claim's held path, when given), else why not."""
    if not entry.clean:
        return f"the slot may have changed since ({entry.why})"
    if identity_difference(entry.identity, identity):
        return "the slot is another device now"
    if not entry.fingerprint or entry.fingerprint != slot_fingerprint(io_path or entry.path):
        return "the slot was written since its image was verified (its fingerprint changed)"
    return ""


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
    trusted = False
    if target_entry is not None:
        why_not = still_clean(target_entry, identity, io_path)
        if not why_not and target_entry.manifest.piece_size != piece:
            why_not = "its image has another piece size"
        if why_not:
            notes.append(f"target's ledger ({target_entry.name}) not used: {why_not}")
        else:
            trusted = True
            old = target_entry.manifest.piece_hashes()
            for index in range(min(count, len(old))):
                # The last piece of a shorter old image may be short: equal hashes mean equal length.
                if old[index] == hashes[index]:
                    result.have[index] = True
                    result.kept_bytes += length(index)

    fd = _open_target(io_path or target, target)
    try:
        # 2. Zero pieces.
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
