"""Piece-size policy and split layout, checked on sizes alone: no image is read or written."""
import os
import subprocess

import libtorrent as lt
import pytest

from helpers import P2PFLEET, ROOT
from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine import bencode, metainfo
from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.errors import ManifestError
from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.metainfo import KIB, MAX_PIECE, MAX_PIECES, MIB, MIN_PIECE, choose_piece_size, parse_size, plan_files

GIB, TIB = 1 << 30, 1 << 40
# libtorrent refuses to load a .torrent above this many bytes by default.
LIBTORRENT_TORRENT_LIMIT = 10_000_000


def pieces(image_size, piece):
    return -(-image_size // piece)


def load_in_libtorrent(image_size, piece, split_size=None):
    """A torrent laid out by the policy, with fake piece hashes, as libtorrent reads it."""
    files = plan_files("img", image_size, piece, split_size)
    info = metainfo.info_dict("img", files, piece, [b"\0" * 20] * pieces(image_size, piece))
    raw = bencode.encode({"info": info})
    assert len(raw) < LIBTORRENT_TORRENT_LIMIT
    return lt.torrent_info(lt.bdecode(raw))


@pytest.mark.parametrize("size", [1, 100 * MIB, 512 * MIB, 10 * GIB, 16 * GIB])
def test_small_images_get_256_kib_pieces(size):
    # A swarm relays only whole pieces: a 512 MiB image must not be 128 pieces of 4 MiB.
    assert choose_piece_size(size) == 256 * KIB


@pytest.mark.parametrize("size, piece", [(16 * GIB + 1, 512 * KIB), (32 * GIB, 512 * KIB), (64 * GIB, MIB),
                                         (100 * GIB, 2 * MIB), (200 * GIB, 4 * MIB)])
def test_mid_sized_images_keep_at_most_65536_pieces(size, piece):
    assert choose_piece_size(size) == piece
    assert pieces(size, piece) <= 65_536 < pieces(size, piece // 2)


@pytest.mark.parametrize("size", [256 * GIB, 1 * TIB, 4 * TIB, metainfo.MAX_IMAGE, 5 * TIB + 12345])
def test_default_fits_every_limit(size):
    piece = choose_piece_size(size)
    assert piece & (piece - 1) == 0
    assert 4 * MIB <= piece <= 64 * MIB
    assert pieces(size, piece) <= MAX_PIECES
    assert 20 * pieces(size, piece) < LIBTORRENT_TORRENT_LIMIT
    # The smallest size that fits: a smaller piece would exceed MAX_PIECES (or, from 256 GiB
    # up, go below 4 MiB).
    assert piece == 4 * MIB or pieces(size, piece // 2) > MAX_PIECES


def test_256_gib_partition_uses_4_mib_pieces():
    assert choose_piece_size(256 * GIB) == 4 * MIB


def test_huge_images_raise_the_piece_size():
    assert choose_piece_size(4 * TIB) == 16 * MIB
    assert choose_piece_size(4 * TIB + 1) == 32 * MIB


@pytest.mark.parametrize("size", [16 * TIB - 16 * KIB, 16 * TIB, 16 * TIB + 1, 100 * TIB])
def test_image_too_large_for_libtorrent_is_refused_before_hashing(size):
    with pytest.raises(ManifestError, match="split it"):
        choose_piece_size(size)


def test_empty_image_is_refused():
    with pytest.raises(ManifestError, match="empty"):
        choose_piece_size(0)


@pytest.mark.parametrize("piece", [MIN_PIECE, 1 * MIB, MAX_PIECE])
def test_requested_power_of_two_in_range_is_used(piece):
    assert choose_piece_size(64 * MIB, piece) == piece


@pytest.mark.parametrize("piece", [3 * MIB, 5 * MIB + 1, MIN_PIECE // 2, 8 * KIB, 2 * MAX_PIECE, 0, -MIB])
def test_requested_piece_size_outside_policy_is_refused(piece):
    with pytest.raises(ManifestError, match="power of two"):
        choose_piece_size(64 * MIB, piece)


def test_requested_piece_too_small_for_the_image_names_the_minimum():
    # 256 GiB in 256 KiB pieces is 1 Mi pieces; 1 MiB is the smallest that fits.
    with pytest.raises(ManifestError, match=r"use 1 MiB or more"):
        choose_piece_size(256 * GIB, 256 * KIB)


def test_requested_piece_too_small_is_refused_before_any_hashing(tmp_path, monkeypatch):
    image = tmp_path / "big.img"
    with open(image, "wb") as f:
        f.truncate(256 * GIB)  # sparse: costs nothing, and must never be read

    def must_not_hash(*_a, **_k):
        raise AssertionError("hashed an image whose piece size was already refused")
    monkeypatch.setattr(metainfo, "hash_image", must_not_hash)
    with pytest.raises(ManifestError, match="1 MiB or more"):
        metainfo.create_manifest(str(image), str(tmp_path), piece_size=16 * KIB)
    assert not list(tmp_path.glob("*.torrent"))


@pytest.mark.parametrize("text, size", [
    ("4M", 4 * MIB), ("4MiB", 4 * MIB), ("4mb", 4 * MIB), ("64K", 64 * KIB), ("256G", 256 * GIB),
    ("2T", 2 * TIB), ("1048576", MIB), (" 16M ", 16 * MIB), ("1.5G", 3 * GIB // 2), (4096, 4096),
])
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "M", "four", "4X", "4.5", "-4M", "0", 0, -1, "infK", "1e400M", True])
def test_parse_size_refuses_nonsense(text):
    with pytest.raises(ManifestError, match="invalid size"):
        parse_size(text)


def test_split_layout_covers_the_image_exactly():
    size = 10 * MIB + 123
    files = plan_files("img", size, 1 * MIB, split_size=4 * MIB)
    assert [(f.path, f.offset, f.size) for f in files] == [
        ("img.part000", 0, 4 * MIB),
        ("img.part001", 4 * MIB, 4 * MIB),
        ("img.part002", 8 * MIB, 2 * MIB + 123),
    ]


def test_split_names_sort_in_offset_order_beyond_a_thousand_files():
    files = plan_files("img", 1500 * MIB, MIB, split_size=MIB)
    names = [f.path for f in files]
    assert names == sorted(names) and names[-1] == "img.part1499"


@pytest.mark.parametrize("split", [1536 * KIB, 4 * MIB + 16 * KIB, 512 * KIB])
def test_split_size_not_a_multiple_of_the_piece_is_refused(split):
    with pytest.raises(ManifestError, match="multiple of the piece size"):
        plan_files("img", 64 * MIB, 1 * MIB, split_size=split)


def test_split_into_too_many_files_is_refused():
    with pytest.raises(ManifestError, match="limit is 4096"):
        plan_files("img", 8 * GIB, MIB, split_size=MIB)


def test_split_not_smaller_than_the_image_is_one_file():
    assert plan_files("img", 8 * MIB, MIB, split_size=8 * MIB) == [metainfo.VirtualFile("img", 0, 8 * MIB)]


def test_libtorrent_loads_a_256_gib_torrent_built_by_the_policy():
    size = 256 * GIB
    piece = choose_piece_size(size)
    ti = load_in_libtorrent(size, piece)
    assert ti.total_size() == size
    assert ti.num_pieces() == pieces(size, piece)
    assert ti.piece_length() == piece
    assert ti.priv()


def test_libtorrent_loads_the_largest_torrent_the_policy_allows():
    size = metainfo.MAX_IMAGE
    ti = load_in_libtorrent(size, choose_piece_size(size))
    assert ti.num_pieces() == MAX_PIECES
    assert ti.total_size() == size


def test_one_byte_more_than_the_policy_allows_is_what_libtorrent_rejects():
    # Pins MAX_IMAGE to libtorrent's real limit, so an upgrade that moves it is noticed.
    with pytest.raises(RuntimeError, match="invalid length"):
        load_in_libtorrent(metainfo.MAX_IMAGE + 1, MAX_PIECE)


def test_libtorrent_maps_split_files_onto_image_offsets():
    size = 256 * GIB + 5 * MIB
    piece = choose_piece_size(size)
    ti = load_in_libtorrent(size, piece, split_size=16 * GIB)
    layout = plan_files("img", size, piece, 16 * GIB)
    assert ti.num_files() == len(layout) == 17
    for i, vf in enumerate(layout):
        # No pad files: each file starts exactly on its piece boundary in the image.
        start = ti.map_file(i, 0, 1)
        assert start.piece * piece + start.start == vf.offset
        end = ti.map_file(i, vf.size - 1, 1)
        assert end.piece * piece + end.start == vf.offset + vf.size - 1


def test_the_cli_help_and_docs_say_the_default_piece_size_the_code_chooses():
    def flat(text):
        return " ".join(text.split())
    policy = metainfo.DEFAULT_PIECE_POLICY
    # What the sentence claims, at its edges.
    assert choose_piece_size(64 * MIB) == 256 * KIB and choose_piece_size(256 * GIB) == 4 * MIB
    assert choose_piece_size(256 * GIB + 1) == 4 * MIB and choose_piece_size(TIB + 1) == 8 * MIB
    assert choose_piece_size(16 * GIB + 1) == 512 * KIB
    shown = subprocess.run(P2PFLEET + ["manifest", "--help"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and f"(default: {policy})" in flat(shown.stdout), shown.stdout
    with open(os.path.join(ROOT, "docs", "cli.md"), encoding="utf-8") as f:
        docs = flat(f.read())
    assert f"The default piece size is {policy}." in docs
    assert "4 MiB" not in docs.split("## `p2pfleet manifest", 1)[1].split("The default piece size", 1)[0]
