"""Manifests of real (small) images: what they contain, when they are reused, what loading refuses."""
import hashlib
import json
import os
import shutil

import blake3
import libtorrent as lt
import pytest

from helpers import MIB
from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine import bencode, metainfo
from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.errors import ManifestError
from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.metainfo import Manifest, create_manifest

PIECE = 256 * 1024


@pytest.fixture
def made(tmp_path, image_factory):
    """A 3 MiB + odd-tail image and its manifest in tmp_path/out."""
    image = image_factory(size=3 * MIB + 1000, seed=7, name="sys.img")
    out = tmp_path / "out"
    out.mkdir()
    manifest, changed = create_manifest(image, str(out), piece_size=PIECE)
    assert changed
    return image, out, manifest


def read(path):
    with open(path, "rb") as f:
        return f.read()


def torrent_info(manifest):
    return lt.torrent_info(lt.bdecode(read(manifest.torrent_path)))


def test_writes_torrent_and_manifest_named_after_the_image(made):
    _, out, manifest = made
    assert sorted(os.listdir(out)) == ["sys.img.manifest.json", "sys.img.torrent"]
    assert manifest.path == str(out / "sys.img.manifest.json")


def test_libtorrent_reads_the_torrent_as_a_private_torrent_with_the_manifest_info_hash(made):
    _, _, manifest = made
    ti = torrent_info(manifest)
    assert str(ti.info_hashes().v1) == manifest.info_hash
    assert ti.priv()
    assert ti.total_size() == manifest.image_size
    assert ti.piece_length() == PIECE
    assert ti.num_pieces() == manifest.piece_count == 13


def test_piece_hashes_are_sha1_of_the_image_pieces(made):
    image, _, manifest = made
    data = read(image)
    expected = [hashlib.sha1(data[i:i + PIECE]).digest() for i in range(0, len(data), PIECE)]
    assert manifest.piece_hashes() == expected
    ti = torrent_info(manifest)
    assert [bytes(ti.hash_for_piece(i)) for i in range(ti.num_pieces())] == expected


def test_digest_is_blake3_of_the_whole_image(made):
    image, _, manifest = made
    assert manifest.digest_algorithm == "blake3"
    assert manifest.digest == blake3.blake3(read(image)).hexdigest()


def test_written_manifest_loads_back_equal(made):
    _, _, manifest = made
    assert Manifest.load(manifest.path) == manifest


def test_unchanged_image_is_not_hashed_again(made, monkeypatch):
    image, out, manifest = made

    def must_not_hash(*_a, **_k):
        raise AssertionError("re-hashed an unchanged image")
    monkeypatch.setattr(metainfo, "hash_image", must_not_hash)
    again, changed = create_manifest(image, str(out), piece_size=PIECE)
    assert not changed
    assert again.info_hash == manifest.info_hash


def test_modified_image_is_hashed_again(made):
    image, out, manifest = made
    st = os.stat(image)
    with open(image, "r+b") as f:
        f.seek(MIB)
        f.write(b"\xff" * 16)
    # A rewrite inside one mtime tick would look unchanged; move mtime on explicitly.
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    again, changed = create_manifest(image, str(out), piece_size=PIECE)
    assert changed
    assert again.digest == blake3.blake3(read(image)).hexdigest() != manifest.digest
    assert Manifest.load(again.path).info_hash == again.info_hash != manifest.info_hash


def test_other_layout_is_hashed_again(made):
    image, out, manifest = made
    again, changed = create_manifest(image, str(out), piece_size=PIECE * 2)
    assert changed and again.piece_size == PIECE * 2


def test_corrupt_torrent_next_to_an_unchanged_manifest_is_rewritten(made):
    image, out, manifest = made
    with open(manifest.torrent_path, "wb") as f:
        f.write(b"garbage")
    again, changed = create_manifest(image, str(out), piece_size=PIECE)
    assert changed
    assert Manifest.load(again.path).info_hash == manifest.info_hash


def test_split_manifest_is_a_multi_file_torrent_laid_over_the_image(tmp_path, image_factory):
    image = image_factory(size=5 * MIB + 4321, seed=3, name="split.img")
    manifest, _ = create_manifest(image, str(tmp_path), piece_size=PIECE, split_size=2 * MIB)
    assert manifest.is_split
    assert [(f.path, f.offset, f.size) for f in manifest.files] == [
        ("split.img.part000", 0, 2 * MIB),
        ("split.img.part001", 2 * MIB, 2 * MIB),
        ("split.img.part002", 4 * MIB, MIB + 4321),
    ]
    ti = torrent_info(manifest)
    assert ti.num_files() == 3 and ti.total_size() == manifest.image_size
    # Piece hashes run over the image as one byte stream, across file boundaries.
    data = read(image)
    assert manifest.piece_hashes() == [hashlib.sha1(data[i:i + PIECE]).digest()
                                       for i in range(0, len(data), PIECE)]
    assert Manifest.load(manifest.path).files == manifest.files


def test_output_directory_must_exist(tmp_path, image_factory):
    with pytest.raises(ManifestError, match="does not exist"):
        create_manifest(image_factory(size=MIB), str(tmp_path / "missing"))


def test_a_dry_run_into_a_directory_not_made_yet_would_make_the_manifest(tmp_path, image_factory):
    # check mode: the role that makes the directory did not run either
    assert create_manifest(image_factory(size=MIB), str(tmp_path / "missing"), dry_run=True) == (None, True)
    assert not (tmp_path / "missing").exists()
    (tmp_path / "file").write_text("")
    with pytest.raises(ManifestError, match="does not exist"):
        create_manifest(image_factory(size=MIB, name="other.img"), str(tmp_path / "file"), dry_run=True)


# --- Manifest.load refusals -------------------------------------------------------------

def rewrite_json(manifest, change):
    with open(manifest.path, encoding="utf-8") as f:
        data = json.load(f)
    change(data)
    with open(manifest.path, "w", encoding="utf-8") as f:
        json.dump(data, f)


def test_load_refuses_a_missing_manifest(tmp_path):
    with pytest.raises(ManifestError, match="no such manifest"):
        Manifest.load(str(tmp_path / "nope.manifest.json"))


@pytest.mark.parametrize("text", ["{not json", "", "[1, 2]", '"a string"', "null"])
def test_load_refuses_what_is_not_a_json_object(made, text):
    _, _, manifest = made
    with open(manifest.path, "w", encoding="utf-8") as f:
        f.write(text)
    with pytest.raises(ManifestError, match=r"manifest\.json: not a"):
        Manifest.load(manifest.path)


@pytest.mark.parametrize("key", ["name", "info_hash", "image_size", "piece_size", "files", "digest", "torrent"])
def test_load_refuses_a_missing_key(made, key):
    _, _, manifest = made
    rewrite_json(manifest, lambda d: d.pop(key))
    with pytest.raises(ManifestError, match=key):
        Manifest.load(manifest.path)


def test_load_refuses_an_unknown_format(made):
    _, _, manifest = made
    rewrite_json(manifest, lambda d: d.update(format=99))
    with pytest.raises(ManifestError, match="format 99"):
        Manifest.load(manifest.path)


def test_load_refuses_a_missing_torrent(made):
    _, _, manifest = made
    os.unlink(manifest.torrent_path)
    with pytest.raises(ManifestError, match="no such torrent"):
        Manifest.load(manifest.path)


def test_load_refuses_a_truncated_torrent(made):
    _, _, manifest = made
    raw = read(manifest.torrent_path)
    with open(manifest.torrent_path, "wb") as f:
        f.write(raw[:len(raw) // 2])
    with pytest.raises(ManifestError, match="corrupt") as err:
        Manifest.load(manifest.path)
    assert manifest.torrent_path in str(err.value)


def test_load_refuses_a_torrent_garbled_inside_the_piece_hashes(made):
    _, _, manifest = made
    raw = bytearray(read(manifest.torrent_path))
    raw[raw.index(b"6:pieces") + 20] ^= 0xFF
    with open(manifest.torrent_path, "wb") as f:
        f.write(raw)
    with pytest.raises(ManifestError, match="info-hash does not match") as err:
        Manifest.load(manifest.path)
    assert manifest.torrent_path in str(err.value)


def test_load_refuses_a_torrent_of_another_image(made, tmp_path, image_factory):
    _, _, manifest = made
    other, _ = create_manifest(image_factory(size=MIB, seed=99, name="other.img"), str(tmp_path), piece_size=PIECE)
    shutil.copy(other.torrent_path, os.path.join(os.path.dirname(manifest.path), "other.torrent"))
    rewrite_json(manifest, lambda d: d.update(torrent="other.torrent"))
    with pytest.raises(ManifestError, match="info-hash does not match"):
        Manifest.load(manifest.path)


def test_load_refuses_a_manifest_whose_sizes_disagree_with_its_torrent(made):
    _, _, manifest = made
    rewrite_json(manifest, lambda d: d.update(image_size=d["image_size"] + 1))
    with pytest.raises(ManifestError, match="disagrees"):
        Manifest.load(manifest.path)


def test_load_refuses_split_offsets_that_do_not_match_the_torrent(tmp_path, image_factory):
    image = image_factory(size=4 * MIB, seed=5, name="s.img")
    manifest, _ = create_manifest(image, str(tmp_path), piece_size=PIECE, split_size=2 * MIB)

    def shift(d):
        d["files"][1]["offset"] += PIECE
    rewrite_json(manifest, shift)
    # Refused by the range check (the shifted file runs past the image) or the torrent's layout.
    with pytest.raises(ManifestError, match=r"files\[1\]\.size .* out of range|s.img.part001 does not match"):
        Manifest.load(manifest.path)


def test_load_refuses_a_hand_made_torrent_with_a_broken_file_list(made):
    _, _, manifest = made
    info = bencode.decode(read(manifest.torrent_path))[b"info"]
    del info[b"length"]
    info[b"files"] = [{b"path": [b"x"]}]
    raw = bencode.encode({b"info": info})
    with open(manifest.torrent_path, "wb") as f:
        f.write(raw)
    rewrite_json(manifest, lambda d: d.update(info_hash=hashlib.sha1(bencode.encode(info)).hexdigest()))
    with pytest.raises(ManifestError, match="corrupt"):
        Manifest.load(manifest.path)


# --- fingerprints ------------------------------------------------------------------------

def test_file_fingerprint_follows_mtime(image_factory):
    image = image_factory(size=MIB)
    before = metainfo.fingerprint(image)
    st = os.stat(image)
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert metainfo.fingerprint(image) != before


def test_device_fingerprint_changes_when_the_first_mib_is_written(loop_factory, image_factory):
    dev = loop_factory(8 * MIB, fill=image_factory(size=8 * MIB, seed=11))
    before = metainfo.fingerprint(dev)
    assert before["kind"] == "device" and before["size"] == 8 * MIB
    assert metainfo.fingerprint(dev) == before
    fd = os.open(dev, os.O_WRONLY)
    try:
        os.pwrite(fd, b"\x00\x01\x02", 512 * 1024 + 3)
        os.fsync(fd)
    finally:
        os.close(fd)
    assert metainfo.fingerprint(dev) != before
