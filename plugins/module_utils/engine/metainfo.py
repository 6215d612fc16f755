"""Manifests: the torrent and the JSON that describe one image.

One read of the image produces everything: the SHA-1 of every piece (the v1 torrent) and
the whole-image digest (what ``verify`` proves a target against). The manifest also keeps
a fingerprint of the source, so asking again for the manifest of an unchanged image costs
a stat, not a 256 GB read.

Piece-size policy (default): the smallest power of two from 256 KiB that keeps the image
within 65,536 pieces, up to 4 MiB (a 256 GiB image: 4 MiB pieces); above that, 4 MiB or
more, doubled until the piece count fits ``MAX_PIECES``. A swarm relays a piece only once
it is whole, so small images need small pieces: 4 MiB pieces left a 512 MiB image 128
pieces and the fleet at half the wire's speed (docs/performance.md). Any power of two
from 16 KiB to 64 MiB can be asked for, and a request that cannot fit is refused before a
byte is hashed. An image can be exposed as
several *virtual files* of a fixed size (a multiple of the piece size) that map back onto
the one image at their offsets.
"""
import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
import dataclasses
from dataclasses import asdict, dataclass, field

from . import bencode
from .errors import ImageError, ManifestError, VerifyError
from .files import read_capped, write_atomic
from .image import probe, read_blocks
from .version import VERSION

try:
    import blake3 as _blake3
except ImportError:  # distributions without the blake3 binding fall back to SHA-256
    _blake3 = None

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30
MIN_PIECE = 16 * KIB
DEFAULT_PIECE_FLOOR = 256 * KIB
DEFAULT_PIECE = 4 * MIB           # the default never goes above this for fewer pieces...
DEFAULT_PIECE_COUNT = 65_536      # ...than this: a 1.3 MB torrent
MAX_PIECE = 64 * MIB
# 20 bytes of SHA-1 per piece: 262,144 pieces keep the .torrent near 5 MB, half of
# libtorrent's default load limit (10 MB), with room for the file list of a split image.
MAX_PIECES = 262_144
MAX_FILES = 4096
# libtorrent 2.1 refuses ("invalid length of torrent") a torrent of 2^44 - 16 KiB bytes or
# more, just below MAX_PIECES * MAX_PIECE; found by loading policy-built torrents.
MAX_IMAGE = (1 << 44) - 16 * KIB - 1
MANIFEST_FORMAT = 1
CREATOR = f"p2pfleet {VERSION}"
MANIFEST_SUFFIX = ".manifest.json"
MAX_MANIFEST_BYTES = 4 * MIB
MAX_TORRENT_BYTES = 16 * MIB
SAMPLE_BLOCK = 64 * KIB
SAMPLE_COUNT = 64
DEFAULT_ALGORITHM = "blake3" if _blake3 is not None else "sha256"
DIGEST_ALGORITHMS = ("blake3", "sha256", "sha512")


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:g} {unit}" if unit == "B" else f"{n:.4g} {unit}"
        n /= 1024
    return str(n)


# The default policy in one sentence, for ``p2pfleet manifest --help`` and docs/cli.md (a test
# holds both to it), so what they say is what choose_piece_size does.
DEFAULT_PIECE_POLICY = (
    f"the smallest power of two from {_human(DEFAULT_PIECE_FLOOR)} that keeps the image within "
    f"{DEFAULT_PIECE_COUNT:,} pieces, up to {_human(DEFAULT_PIECE)} (reached at "
    f"{_human(DEFAULT_PIECE_COUNT * DEFAULT_PIECE)}); larger images get {_human(DEFAULT_PIECE)} or more, "
    f"doubled until at most {MAX_PIECES:,} pieces"
)


def parse_size(text) -> int:
    """``4M``, ``64MiB``, ``256G``, ``1048576`` → bytes (binary units)."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text <= 0:
            raise ManifestError(f"invalid size {text!r}; a size must be positive")
        return text
    s = str(text).strip().upper().replace("IB", "").rstrip("B")
    units = {"K": KIB, "M": MIB, "G": GIB, "T": 1 << 40}
    try:
        size = int(float(s[:-1]) * units[s[-1]]) if s and s[-1] in units else int(s)
    except (ValueError, OverflowError):
        size = 0
    if size <= 0:
        raise ManifestError(f"invalid size {text!r}; use bytes or a binary unit such as 4M or 64G")
    return size


def choose_piece_size(image_size: int, requested: int = None) -> int:
    """The piece size for an image of ``image_size`` bytes (see the module docstring)."""
    if image_size <= 0:
        raise ManifestError("image is empty; nothing to distribute")
    if image_size > MAX_IMAGE:
        raise ManifestError(
            f"image of {_human(image_size)} is larger than libtorrent accepts "
            f"({_human(MAX_IMAGE)}); split it into several images"
        )
    if requested is not None:
        if requested < MIN_PIECE or requested > MAX_PIECE or requested & (requested - 1):
            raise ManifestError(
                f"piece size {requested} is not a power of two between "
                f"{_human(MIN_PIECE)} and {_human(MAX_PIECE)}"
            )
        pieces = -(-image_size // requested)
        if pieces > MAX_PIECES:
            smallest = _smallest_fitting(image_size)
            hint = f"use {_human(smallest)} or more" if smallest else "the image is too large"
            raise ManifestError(
                f"piece size {_human(requested)} gives {pieces} pieces for a {_human(image_size)} "
                f"image; the limit is {MAX_PIECES}: {hint}"
            )
        return requested
    size = DEFAULT_PIECE_FLOOR
    while size < DEFAULT_PIECE and -(-image_size // size) > DEFAULT_PIECE_COUNT:
        size *= 2
    size = _smallest_fitting(image_size, start=size)
    if size is None:
        raise ManifestError(
            f"image of {_human(image_size)} needs more than {MAX_PIECES} pieces even at "
            f"{_human(MAX_PIECE)}; split it into several images"
        )
    return size


def _smallest_fitting(image_size: int, start: int = MIN_PIECE):
    size = start
    while size <= MAX_PIECE:
        if -(-image_size // size) <= MAX_PIECES:
            return size
        size *= 2
    return None


@dataclass(frozen=True)
class VirtualFile:
    """One file of the torrent: ``size`` bytes of the image starting at ``offset``."""

    path: str
    offset: int
    size: int


def plan_files(name: str, image_size: int, piece_size: int, split_size: int = None) -> list:
    """How the image is exposed in the torrent: one file, or virtual files of split_size."""
    if split_size is None or split_size >= image_size:
        return [VirtualFile(name, 0, image_size)]
    if split_size < piece_size or split_size % piece_size:
        raise ManifestError(
            f"split size {split_size} must be a multiple of the piece size {piece_size}"
        )
    count = -(-image_size // split_size)
    if count > MAX_FILES:
        raise ManifestError(f"split size {_human(split_size)} makes {count} files; the limit is {MAX_FILES}")
    width = max(3, len(str(count - 1)))
    return [
        VirtualFile(f"{name}.part{i:0{width}d}", i * split_size, min(split_size, image_size - i * split_size))
        for i in range(count)
    ]


@dataclass
class Manifest:
    """What describes an image: its torrent, size, pieces and whole-image digest."""

    name: str
    info_hash: str
    image_size: int
    piece_size: int
    piece_count: int
    files: list
    digest_algorithm: str
    digest: str
    torrent: str
    source: dict = field(default_factory=dict)
    created: str = ""
    # Pieces of all zeros, as [first, end) index ranges: a fetch fills them locally and
    # never asks the swarm for them. Derived from the piece hashes (a zero piece's SHA-1
    # is known), so it costs no read; a manifest that claims otherwise is refused.
    zero_pieces: list = field(default_factory=list)
    format: int = MANIFEST_FORMAT
    path: str = field(default=None, compare=False, repr=False)
    _torrent_bytes: bytes = field(default=None, compare=False, repr=False)

    @property
    def torrent_path(self) -> str:
        return os.path.join(os.path.dirname(self.path or "."), self.torrent)

    @property
    def is_split(self) -> bool:
        return len(self.files) > 1

    def torrent_bytes(self) -> bytes:
        if self._torrent_bytes is None:
            self._torrent_bytes = read_capped(self.torrent_path, MAX_TORRENT_BYTES, "torrent", error=ManifestError)
        return self._torrent_bytes

    def piece_hashes(self) -> list:
        info = bencode.decode(self.torrent_bytes())[b"info"]
        pieces = info[b"pieces"]
        return [pieces[i:i + 20] for i in range(0, len(pieces), 20)]

    def zero_indexes(self) -> set:
        """Indexes of the pieces of all zeros (from the hashes: older manifests too)."""
        ranges = zero_ranges(self.piece_hashes(), self.image_size, self.piece_size)
        return {index for first, end in ranges for index in range(first, end)}

    @property
    def zero_bytes(self) -> int:
        """Bytes of the image in zero pieces (from the recorded ranges)."""
        total = 0
        for first, end in self.zero_pieces:
            total += (end - first) * self.piece_size
            if end == self.piece_count:
                total -= self.piece_count * self.piece_size - self.image_size
        return total

    def copy_to(self, directory: str, stem: str, error=ManifestError) -> "Manifest":
        """Write ``STEM.torrent`` and ``STEM.manifest.json`` (mode 0600) into ``directory``:
        a private copy that outlives the files it was made from. Returns the copy, unread."""
        write_atomic(os.path.join(directory, stem + ".torrent"), self.torrent_bytes(), mode=0o600, error=error)
        copy = dataclasses.replace(self, torrent=stem + ".torrent",
                                   path=os.path.join(directory, stem + MANIFEST_SUFFIX))
        write_atomic(copy.path, copy.to_json().encode("utf-8"), mode=0o600, error=error)
        return copy

    def to_json(self) -> str:
        data = {k: v for k, v in asdict(self).items() if k not in ("path", "_torrent_bytes")}
        data["files"] = [asdict(f) if isinstance(f, VirtualFile) else f for f in self.files]
        data["digest"] = {"algorithm": data.pop("digest_algorithm"), "value": data.pop("digest")}
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def load(cls, path: str, complete: bool = True) -> "Manifest":
        """Read a manifest and check that its torrent is intact and agrees with it.

        Every field is type- and range-checked; an error names the field. With
        ``complete=False`` only the manifest itself is read (no torrent, and the digest
        algorithm need not be available to this Python): enough for its name, info-hash
        and size.
        """
        raw = read_capped(path, MAX_MANIFEST_BYTES, "manifest", error=ManifestError)
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise ManifestError(f"{path}: not a readable manifest: {str(exc)[:200]}") from None
        if not isinstance(data, dict):
            raise ManifestError(f"{path}: not a manifest (expected a JSON object)")
        if data.get("format") != MANIFEST_FORMAT:
            raise ManifestError(f"{path}: unsupported manifest format {str(data.get('format'))[:40]}")
        digest = _field(data, "digest", dict, path)
        files = _field(data, "files", list, path)
        source = _field(data, "source", dict, path, default={})
        manifest = cls(
            name=_text(data, "name", path),
            info_hash=_text(data, "info_hash", path),
            image_size=_integer(data, "image_size", path),
            piece_size=_integer(data, "piece_size", path),
            piece_count=_integer(data, "piece_count", path),
            files=[_virtual_file(f, i, path) for i, f in enumerate(files)],
            digest_algorithm=_text(digest, "algorithm", path, "digest."),
            digest=_text(digest, "value", path, "digest."),
            torrent=_text(data, "torrent", path),
            source=source,
            created=_text(data, "created", path, default=""),
            zero_pieces=_ranges(data, path),
            path=os.path.abspath(path),
        )
        manifest._check_numbers(runtime=complete)
        if complete:
            manifest._check_torrent()
        return manifest

    def _check_numbers(self, runtime: bool = True) -> None:
        where = self.path
        if len(self.info_hash) != 40 or not set(self.info_hash) <= set("0123456789abcdef"):
            raise ManifestError(f"{where}: info_hash is not 40 lowercase hex digits")
        if not self.torrent or "/" in self.torrent or self.torrent.startswith("."):
            raise ManifestError(f"{where}: torrent must be a file name beside the manifest, got {self.torrent!r}")
        if self.digest_algorithm not in DIGEST_ALGORITHMS:
            raise ManifestError(f"{where}: digest algorithm {self.digest_algorithm!r} is not one of "
                                f"{', '.join(DIGEST_ALGORITHMS)}")
        if runtime:
            try:
                new_digest(self.digest_algorithm)  # a missing blake3 module is found now, not after a download
            except VerifyError as exc:
                raise ManifestError(f"{where}: {exc}") from None
        if not 0 < self.image_size <= MAX_IMAGE:
            raise ManifestError(f"{where}: image_size {self.image_size} is out of range")
        if self.piece_size < MIN_PIECE or self.piece_size > MAX_PIECE or self.piece_size & (self.piece_size - 1):
            raise ManifestError(f"{where}: piece_size {self.piece_size} is not a power of two in 16 KiB..64 MiB")
        if self.piece_count != -(-self.image_size // self.piece_size) or self.piece_count > MAX_PIECES:
            raise ManifestError(f"{where}: piece_count {self.piece_count} does not fit image_size and piece_size")
        if not 1 <= len(self.files) <= MAX_FILES:
            raise ManifestError(f"{where}: {len(self.files)} files is out of range 1..{MAX_FILES}")
        # Where a split image's files are written: each a slice inside the image starting
        # on a piece boundary; only the last may end inside a piece. (That they tile the
        # image in the torrent's order is checked against the torrent.)
        for i, vf in enumerate(self.files):
            last = i == len(self.files) - 1
            if not 0 <= vf.offset < self.image_size or vf.offset % self.piece_size:
                raise ManifestError(f"{where}: files[{i}].offset {vf.offset} is out of range (a multiple of "
                                    f"piece_size {self.piece_size} inside image_size {self.image_size})")
            if vf.size <= 0 or vf.offset + vf.size > self.image_size or (not last and vf.size % self.piece_size):
                raise ManifestError(f"{where}: files[{i}].size {vf.size} is out of range (a positive multiple "
                                    f"of piece_size {self.piece_size} inside image_size {self.image_size})")
        if not 0 < len(self.name) <= 255 or "/" in self.name or self.name.startswith("."):
            raise ManifestError(f"{where}: name {self.name[:60]!r} is not a file name")

    def _check_torrent(self) -> None:
        raw = self.torrent_bytes()
        where = self.torrent_path
        try:
            meta = bencode.decode(raw)
            info = meta[b"info"]
            piece_length = info[b"piece length"]
            pieces = info[b"pieces"]
        except (bencode.BencodeError, KeyError, TypeError) as exc:
            raise ManifestError(f"{where}: corrupt torrent ({exc})") from None
        if hashlib.sha1(bencode.encode(info)).hexdigest() != self.info_hash:
            raise ManifestError(f"{where}: torrent info-hash does not match manifest {self.info_hash}")
        try:
            if b"files" in info:
                lengths = [f[b"length"] for f in info[b"files"]]
            else:
                lengths = [info[b"length"]]
            total, pieces_size = sum(lengths), len(pieces)
        except (KeyError, TypeError) as exc:
            raise ManifestError(f"{where}: corrupt torrent ({exc})") from None
        if piece_length != self.piece_size or total != self.image_size or pieces_size != 20 * self.piece_count:
            raise ManifestError(f"{where}: torrent disagrees with manifest on size or pieces")
        hashes = [pieces[i:i + 20] for i in range(0, len(pieces), 20)]
        if self.zero_pieces and self.zero_pieces != zero_ranges(hashes, self.image_size, self.piece_size):
            raise ManifestError(f"{self.path}: zero_pieces does not match the torrent's piece hashes")
        # The manifest's offsets are where a split image's files are written: they must
        # tile the image in the torrent's order, or a fetch writes bytes to the wrong place.
        if len(lengths) != len(self.files):
            raise ManifestError(f"{where}: torrent has {len(lengths)} files, manifest lists {len(self.files)}")
        offset = 0
        for vf, length in zip(self.files, lengths):
            if vf.offset != offset or vf.size != length:
                raise ManifestError(f"{where}: manifest file {vf.path} does not match the torrent's layout")
            offset += length


_MISSING = object()
_KINDS = {dict: "a mapping", list: "a list", str: "a string", int: "an integer"}


def _field(data, key, kind, path, prefix="", default=_MISSING, name=None):
    """``data[key]`` checked to be of ``kind``; the error names the field (``files[2].size``)."""
    name = name or f"{prefix}{key}"
    value = data.get(key, default)
    if value is _MISSING:
        raise ManifestError(f"{path}: manifest has no field {name}")
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ManifestError(f"{path}: {name} must be {_KINDS[kind]}, got {type(value).__name__} "
                            f"{json.dumps(value)[:40] if _jsonable(value) else ''}".rstrip())
    return value


def _jsonable(value) -> bool:
    return isinstance(value, (str, int, float, bool)) or value is None


def _virtual_file(entry, index, path) -> VirtualFile:
    where = f"files[{index}]"
    _field({where: entry}, where, dict, path)
    return VirtualFile(_text(entry, "path", path, where + "."), _integer(entry, "offset", path, where + "."),
                       _integer(entry, "size", path, where + "."))


def _ranges(data, path) -> list:
    """``zero_pieces``: sorted, disjoint ``[first, end)`` index pairs."""
    ranges = _field(data, "zero_pieces", list, path, default=[])
    start = 0
    for i, pair in enumerate(ranges):
        ok = isinstance(pair, list) and len(pair) == 2 and all(isinstance(n, int) and not isinstance(n, bool) for n in pair)
        ok = ok and start <= pair[0] < pair[1]
        if not ok:
            raise ManifestError(f"{path}: zero_pieces[{i}] must be a pair [first, end) of piece indexes, "
                                "sorted and apart from the one before")
        start = pair[1] + 1
    return ranges


def zero_piece_hash(length: int) -> bytes:
    """The SHA-1 of ``length`` zero bytes (cached: one per piece size)."""
    digest = _ZERO_HASHES.get(length)
    if digest is None:
        digest = _ZERO_HASHES[length] = hashlib.sha1(bytes(length)).digest()
    return digest


_ZERO_HASHES = {}


def zero_ranges(hashes, image_size: int, piece_size: int) -> list:
    """The ``[first, end)`` ranges of pieces whose SHA-1 is that of zeros."""
    count = len(hashes)
    if not count:
        return []
    full, last = zero_piece_hash(piece_size), zero_piece_hash(image_size - (count - 1) * piece_size)
    ranges = []
    for index, digest in enumerate(hashes):
        if digest == (last if index == count - 1 else full):
            if ranges and ranges[-1][1] == index:
                ranges[-1][1] = index + 1
            else:
                ranges.append([index, index + 1])
    return ranges


def _integer(data, key, path, prefix="") -> int:
    return _field(data, key, int, path, prefix)


def _text(data, key, path, prefix="", default=_MISSING) -> str:
    value = _field(data, key, str, path, prefix, default)
    if len(value) > 4096:
        raise ManifestError(f"{path}: {prefix}{key} must be a string of at most 4096 characters")
    return value


def info_dict(name: str, files: list, piece_size: int, piece_hashes: list) -> dict:
    info = {
        "name": name,
        "piece length": piece_size,
        "pieces": b"".join(piece_hashes),
        "private": 1,
    }
    if len(files) == 1:
        info["length"] = files[0].size
    else:
        info["files"] = [{"length": f.size, "path": [f.path]} for f in files]
    return info


def fingerprint(path: str) -> dict:
    """Cheap identity of an image source: unchanged fingerprint ⇒ unchanged bytes.

    For a file: device, inode, size and modification time. A block device has no
    trustworthy modification time, so its fingerprint adds a digest of sampled blocks
    (the first and last MiB, where file systems keep their superblocks and journals, and
    SAMPLE_COUNT blocks spread over the device).
    """
    info = probe(path)
    # A device node's inode changes at every boot (identity.py): it says nothing of the bytes.
    fp = {"kind": info.kind, "size": info.size, "dev": info.dev, "ino": 0 if info.is_device else info.ino}
    if info.kind == "file":
        fp["mtime_ns"] = info.mtime_ns
        return fp
    h = hashlib.sha256()
    offsets = {0, max(0, info.size - MIB)}
    step = max(SAMPLE_BLOCK, info.size // SAMPLE_COUNT)
    offsets.update(range(0, info.size, step))
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        for off in sorted(offsets):
            length = MIB if off in (0, max(0, info.size - MIB)) else SAMPLE_BLOCK
            h.update(os.pread(fd, min(length, info.size - off), off))
    finally:
        os.close(fd)
    fp["sample_sha256"] = h.hexdigest()
    return fp


def new_digest(algorithm: str):
    """A fresh hash object for a manifest's whole-image digest algorithm."""
    if algorithm == "blake3":
        if _blake3 is None:
            raise VerifyError("this manifest uses blake3 but the blake3 Python module is not installed")
        return _blake3.blake3(max_threads=_blake3.blake3.AUTO)
    if algorithm in ("sha256", "sha512"):
        return hashlib.new(algorithm)
    raise VerifyError(f"unknown digest algorithm {algorithm!r}")


def _sha1(data) -> bytes:
    return hashlib.sha1(data).digest()


def hash_pieces(path: str, size: int, piece_size: int, whole=None, progress=None) -> list:
    """The SHA-1 of every piece of the first ``size`` bytes of ``path``, in one pass.

    The engine's only piece hasher. Pieces are hashed on a thread pool while ``whole``
    (a whole-image digest object, optional) runs in order; hashlib and blake3 release the
    GIL, so both cores work while a reader thread keeps the disk busy.
    """
    hashes, pending = [], []
    workers = max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for offset, data in read_blocks(path, size, block=piece_size, depth=2 * workers):
            pending.append(pool.submit(_sha1, data))
            if whole is not None:
                whole.update(data)
            while len(pending) > 2 * workers:
                hashes.append(pending.pop(0).result())
            if progress:
                progress(offset + len(data), size)
        hashes.extend(f.result() for f in pending)
    return hashes


def hash_image(path: str, size: int, piece_size: int, algorithm: str = DEFAULT_ALGORITHM, progress=None):
    """One pass over the image: ``(piece SHA-1 list, whole-image digest hex)``."""
    whole = new_digest(algorithm)
    hashes = hash_pieces(path, size, piece_size, whole=whole, progress=progress)
    return hashes, whole.hexdigest()


def create_manifest(image_path: str, out_dir: str, name: str = None, piece_size: int = None,
                    split_size: int = None, force: bool = False, progress=None, dry_run: bool = False):
    """Write ``NAME.torrent`` and ``NAME.manifest.json`` for an image into ``out_dir``.

    Returns ``(manifest, changed)``. When a manifest for the same source with the same
    fingerprint and layout is already there, nothing is hashed and ``changed`` is False.
    ``dry_run`` checks everything but hashes and writes nothing: ``(None, True)`` when a
    manifest would be made — also when ``out_dir`` is not there yet (in a check run, the
    task that makes it did not run either).
    """
    info = probe(image_path)
    name = name or os.path.basename(image_path.rstrip("/"))
    if not name or "/" in name or name.startswith("."):
        raise ManifestError(f"invalid image name {name!r}")
    piece = choose_piece_size(info.size, piece_size)
    files = plan_files(name, info.size, piece, split_size)
    if not os.path.isdir(out_dir):
        if dry_run and not os.path.exists(out_dir):
            return None, True
        raise ManifestError(f"{out_dir}: output directory does not exist")
    manifest_path = os.path.join(out_dir, name + MANIFEST_SUFFIX)
    fp = fingerprint(image_path)
    source = {"path": os.path.abspath(image_path), "fingerprint": fp}

    if not force and os.path.exists(manifest_path):
        old = _unchanged_manifest(manifest_path, source, piece, files)
        if old is not None:
            return old, False
    if dry_run:
        return None, True

    hashes, digest = hash_image(image_path, info.size, piece, progress=progress)
    after = fingerprint(image_path)
    if after != fp:
        raise ImageError(f"{image_path}: changed while it was being hashed; is it in use?")
    return _write_manifest(manifest_path, name, files, piece, hashes, digest, info.size, source), True


def _unchanged_manifest(manifest_path: str, source: dict, piece: int, files: list):
    """The manifest at ``manifest_path`` if it describes this very source and layout, else None."""
    try:
        old = Manifest.load(manifest_path)
    except ManifestError:
        old = None
    if old and old.source == source and old.piece_size == piece and old.files == files:
        return old
    return None


def _write_manifest(manifest_path: str, name: str, files: list, piece: int, hashes: list, digest: str,
                    image_size: int, source: dict) -> Manifest:
    """Write the torrent and the manifest of an image just hashed; the written manifest."""
    info_section = info_dict(name, files, piece, hashes)
    torrent = {
        "info": info_section,
        "created by": CREATOR,
        "creation date": int(time.time()),
    }
    manifest = Manifest(
        name=name,
        info_hash=hashlib.sha1(bencode.encode(info_section)).hexdigest(),
        image_size=image_size,
        piece_size=piece,
        piece_count=len(hashes),
        files=files,
        digest_algorithm=DEFAULT_ALGORITHM,
        digest=digest,
        torrent=name + ".torrent",
        source=source,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        zero_pieces=zero_ranges(hashes, image_size, piece),
        path=os.path.abspath(manifest_path),
    )
    write_atomic(manifest.torrent_path, bencode.encode(torrent), error=ManifestError)
    write_atomic(manifest_path, manifest.to_json().encode("utf-8"), error=ManifestError)
    manifest._torrent_bytes = None
    return manifest
