"""Proving a target holds an image: whole-image digest, and which pieces are wrong when not."""
import os
import shutil

import pytest

from helpers import MIB
from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine import metainfo, verify
from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.errors import ImageError, VerifyError
from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.metainfo import create_manifest

PIECE = 256 * 1024
SIZE = 4 * MIB + 777


@pytest.fixture
def manifest(tmp_path, image_factory):
    image = image_factory(size=SIZE, seed=21, name="img")
    m, _ = create_manifest(image, str(tmp_path), piece_size=PIECE)
    return m


@pytest.fixture
def copy(tmp_path, manifest):
    path = str(tmp_path / "copy")
    shutil.copyfile(manifest.source["path"], path)
    return path


def flip(path, offset):
    fd = os.open(path, os.O_RDWR)
    try:
        byte = os.pread(fd, 1, offset)
        os.pwrite(fd, bytes([byte[0] ^ 0x01]), offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def test_identical_copy_verifies(manifest, copy):
    result = verify.verify_target(manifest, copy)
    assert (result.algorithm, result.value, result.size) == ("blake3", manifest.digest, SIZE)
    assert verify.bad_pieces(manifest, copy) == []


def test_digest_covers_only_the_image_bytes_of_a_larger_target(manifest, copy):
    with open(copy, "ab") as f:
        f.write(b"partition tail that is not part of the image")
    assert verify.verify_target(manifest, copy).value == manifest.digest


def test_progress_reaches_the_image_size(manifest, copy):
    seen = []
    verify.digest_image(copy, SIZE, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (SIZE, SIZE)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


@pytest.mark.parametrize("offset", [0, PIECE - 1, SIZE // 2, SIZE - 1])
def test_one_flipped_byte_fails_verification(manifest, copy, offset):
    flip(copy, offset)
    with pytest.raises(VerifyError, match="does not match"):
        verify.verify_target(manifest, copy)


def test_bad_pieces_names_exactly_the_flipped_pieces(manifest, copy):
    offsets = [3, 5 * PIECE + 100, 6 * PIECE - 1, SIZE - 1]
    for offset in offsets:
        flip(copy, offset)
    assert verify.bad_pieces(manifest, copy) == [0, 5, manifest.piece_count - 1]


def test_bad_pieces_across_many_pieces_stay_in_order(tmp_path, image_factory):
    # More pieces than bad_pieces keeps in flight, so batching order is exercised.
    image = image_factory(size=40 * 16384, seed=4, name="many")
    m, _ = create_manifest(image, str(tmp_path), piece_size=16384)
    target = str(tmp_path / "many.copy")
    shutil.copyfile(image, target)
    wrong = [1, 2, 9, 17, 30, 39]
    for index in wrong:
        flip(target, index * 16384 + 7)
    assert verify.bad_pieces(m, target) == wrong


def test_target_shorter_than_the_image_names_the_size(manifest, copy):
    os.truncate(copy, SIZE - 10)
    with pytest.raises(ImageError, match=f"expected {SIZE} bytes"):
        verify.verify_target(manifest, copy)
    with pytest.raises(ImageError, match=f"expected {SIZE} bytes"):
        verify.bad_pieces(manifest, copy)


def test_missing_target_is_an_image_error(manifest, tmp_path):
    with pytest.raises(ImageError, match="cannot open"):
        verify.verify_target(manifest, str(tmp_path / "absent"))


def test_unknown_digest_algorithm_is_refused():
    with pytest.raises(VerifyError, match="unknown digest algorithm"):
        metainfo.new_digest("md5")


def test_verifies_a_loop_device_and_finds_its_bad_piece(manifest, loop_factory):
    dev = loop_factory(8 * MIB, fill=manifest.source["path"])
    assert verify.verify_target(manifest, dev).value == manifest.digest
    flip(dev, 7 * PIECE + 5)
    with pytest.raises(VerifyError):
        verify.verify_target(manifest, dev)
    assert verify.bad_pieces(manifest, dev) == [7]


def test_check_target_gives_the_digest_or_the_mismatch_and_the_wrong_pieces(manifest, copy, monkeypatch):
    assert verify.check_target(manifest, copy).digest.value == manifest.digest
    flip(copy, 5 * PIECE + 100)
    found = verify.check_target(manifest, copy)
    assert found.digest is None and "does not match" in str(found.mismatch) and found.bad == [5]
    assert verify.check_target(manifest, copy, pieces=False).bad is None

    def unreadable(*_args, **_kwargs):
        raise ImageError(f"{copy}: went away")
    monkeypatch.setattr(verify, "bad_pieces", unreadable)
    found = verify.check_target(manifest, copy)
    assert found.bad is None and str(found.pieces_error) == f"{copy}: went away" and found.mismatch is not None
