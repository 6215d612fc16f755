"""Whole-image digests and per-piece checks of a target, streamed at disk speed.

libtorrent never re-checks a device target for us (it believes a device is empty, and a
forced recheck of a finished device torrent resets it to zero pieces), so integrity is
proved here, outside libtorrent: one streaming digest over exactly the image's bytes, and,
when that fails, a per-piece SHA-1 pass that says which pieces to fetch again.
"""
import hashlib
import os
from dataclasses import dataclass

from .errors import P2PFleetError, VerifyError
from .image import read_blocks
from .metainfo import DEFAULT_ALGORITHM, hash_pieces, new_digest


@dataclass
class DigestResult:
    algorithm: str
    value: str
    size: int


def digest_image(path: str, size: int, algorithm: str = DEFAULT_ALGORITHM, progress=None) -> DigestResult:
    """Digest exactly ``size`` bytes of ``path``; ``progress(done, total)`` after each block."""
    h = new_digest(algorithm)
    done = 0
    for _offset, data in read_blocks(path, size):
        h.update(data)
        done += len(data)
        if progress:
            progress(done, size)
    return DigestResult(algorithm, h.hexdigest(), size)


def verify_target(manifest, path: str, progress=None, io_path: str = None) -> DigestResult:
    """Prove ``path`` holds the manifest's image. Raises VerifyError if it does not.
    ``io_path``: where to read it (a claim's held path); ``path`` names it in errors."""
    result = digest_image(io_path or path, manifest.image_size, manifest.digest_algorithm, progress)
    if result.value != manifest.digest:
        raise VerifyError(
            f"{path}: {manifest.digest_algorithm} digest {result.value[:16]}… does not match "
            f"manifest {manifest.name} ({manifest.digest[:16]}…)"
        )
    return result


def bad_pieces(manifest, path: str, progress=None, io_path: str = None) -> list:
    """Indexes of the pieces whose SHA-1 on ``path`` (read at ``io_path``) differs from the torrent's."""
    expected = manifest.piece_hashes()
    found = hash_pieces(io_path or path, manifest.image_size, manifest.piece_size, progress=progress)
    return [index for index, (want, got) in enumerate(zip(expected, found)) if want != got]


@dataclass(frozen=True)
class TargetCheck:
    """What ``check_target`` found: the digest, or the mismatch and which pieces are wrong."""
    digest: DigestResult = None
    mismatch: VerifyError = None        # the whole-image digest did not match
    bad: list = None                    # the wrong pieces, when asked for
    pieces_error: P2PFleetError = None  # asked for, but the pieces could not be checked


def check_target(manifest, path: str, pieces: bool = True, progress=None) -> TargetCheck:
    """Verify ``path`` against the manifest; on a mismatch and with ``pieces``, also find the
    wrong pieces. The one check behind the ``image_verify`` module and ``p2pfleet verify``,
    each of which words the answer its own way. Errors other than the mismatch propagate."""
    try:
        return TargetCheck(digest=verify_target(manifest, path, progress=progress))
    except VerifyError as exc:
        if not pieces:
            return TargetCheck(mismatch=exc)
        try:
            return TargetCheck(mismatch=exc, bad=bad_pieces(manifest, path))
        except P2PFleetError as inner:
            return TargetCheck(mismatch=exc, pieces_error=inner)


def spot_check(manifest, fd: int, path: str, samples: int = 8) -> None:
    """Compare a few pieces (first, last and spread between) with the torrent's SHA-1s.

    Seeding trusts an image whose fingerprint is unchanged; for any other source this
    turns the common mistake (the wrong image) into an error before a peer is served.
    """
    hashes = manifest.piece_hashes()
    count = manifest.piece_count
    for index in sorted({0, count - 1, *range(0, count, max(1, count // samples))}):
        offset = index * manifest.piece_size
        length = min(manifest.piece_size, manifest.image_size - offset)
        try:
            data = os.pread(fd, length, offset)
        except OSError as exc:
            raise VerifyError(f"{path}: read failed: {exc.strerror}") from None
        if hashlib.sha1(data).digest() != hashes[index]:
            raise VerifyError(f"{path}: does not hold the image of manifest {manifest.name} (piece {index} differs)")
