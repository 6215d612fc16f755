"""Input a careless or hostile user gives: one error line, no traceback, nothing written.

Each test names a class of bad input (issue: hardening) and tries several members of it.
"""
import json
import os
import subprocess
import time

import pytest

from conftest import MIB, needs_loop, run_cli
from engine.metainfo import create_manifest
from swarm_helpers import Proc, file_digest, free_port, ready_seeder

IMAGE_SIZE = 4 * MIB


@pytest.fixture
def manifest(tmp_path, image_factory):
    m, _ = create_manifest(image_factory(size=IMAGE_SIZE, seed=41, name="img"), str(tmp_path),
                           piece_size=256 * 1024)
    return m


def assert_one_error_line(proc, *words):
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("p2pfleet: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


def fetch(manifest_path, target, tmp_path):
    return run_cli("fetch", manifest_path, target, "--peer", "127.0.0.1:1", "--state-dir", tmp_path / "state",
                   "--listen", f"127.0.0.1:{free_port()}", timeout=60)


def edited(manifest, tmp_path, name, change):
    data = json.loads(open(manifest.path).read())
    change(data)
    path = tmp_path / name
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


@pytest.mark.parametrize("name, change, words", [
    ("huge-number", lambda d: d.update(image_size=1e999), ["image_size"]),
    ("piece-zero", lambda d: d.update(piece_size=0), ["piece_size 0 is not a power of two"]),
    ("ten-million-pieces", lambda d: d.update(piece_size=16384, piece_count=10_000_000, image_size=16384 * 10_000_000),
     ["piece_count 10000000"]),
    ("odd-piece", lambda d: d.update(piece_size=3 * MIB), ["is not a power of two"]),
    ("negative", lambda d: d.update(image_size=-5), ["image_size -5 is out of range"]),
    ("md5", lambda d: d.update(digest={"algorithm": "md5", "value": "00"}), ["digest algorithm 'md5' is not one of"]),
    ("no-files", lambda d: d.update(files=[]), ["0 files is out of range"]),
])
def test_manifests_with_impossible_numbers_are_refused_before_any_target_exists(manifest, tmp_path, name, change,
                                                                                  words):
    path = edited(manifest, tmp_path, name + ".manifest.json", change)
    target = tmp_path / "target.img"
    assert_one_error_line(fetch(path, target, tmp_path), *words)
    assert not target.exists(), "a target was created for a manifest that cannot be fetched"
    assert_one_error_line(run_cli("verify", path, manifest.path.replace(".manifest.json", ""), "--pieces"), *words)


def test_manifest_nested_deeper_than_any_parser_should_go_is_one_line(tmp_path):
    path = tmp_path / "deep.manifest.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    assert_one_error_line(fetch(path, tmp_path / "t.img", tmp_path), "not a readable manifest")
    assert not (tmp_path / "t.img").exists()


def test_a_manifest_or_torrent_that_is_not_a_regular_file_is_refused_without_reading_it(manifest, tmp_path):
    fifo = tmp_path / "fifo.manifest.json"
    os.mkfifo(fifo)
    # A FIFO would block a plain open() forever, /dev/zero would fill memory.
    for path in (fifo, "/dev/zero", tmp_path):
        assert_one_error_line(fetch(path, tmp_path / "t.img", tmp_path), "not a regular file")
    torrent_fifo = tmp_path / "img.torrent"
    os.replace(manifest.torrent_path, tmp_path / "saved.torrent")
    os.mkfifo(torrent_fifo)
    assert_one_error_line(fetch(manifest.path, tmp_path / "t.img", tmp_path), "torrent", "not a regular file")
    assert not (tmp_path / "t.img").exists()


def test_the_jobs_own_files_are_never_a_target(manifest, tmp_path):
    for own in (manifest.path, manifest.torrent_path):
        before = file_digest(own, os.path.getsize(own))
        assert_one_error_line(fetch(manifest.path, own, tmp_path), "which this job reads")
        assert file_digest(own, os.path.getsize(own)) == before, f"{own} was written"


def test_a_file_being_seeded_is_not_a_target_for_another_process(manifest, tmp_path):
    image = manifest.source["path"]
    seeder = Proc("seed", manifest.path, image, "--listen", f"127.0.0.1:{free_port()}", log_path=tmp_path / "seed")
    try:
        seeder.wait_for(ready_seeder, 30, "seeder ready")
        before = file_digest(image, IMAGE_SIZE)
        assert_one_error_line(fetch(manifest.path, image, tmp_path), "another job is seeding or writing this file")
        assert file_digest(image, IMAGE_SIZE) == before
    finally:
        seeder.stop()


@needs_loop
def test_a_device_being_seeded_is_not_a_target_for_another_process(manifest, tmp_path, loop_factory, image_factory):
    other, _ = create_manifest(image_factory(size=IMAGE_SIZE, seed=42, name="other"), str(tmp_path))
    dev = loop_factory(IMAGE_SIZE, fill=manifest.source["path"])
    seeder = Proc("seed", manifest.path, dev, "--listen", f"127.0.0.1:{free_port()}", log_path=tmp_path / "seed")
    try:
        seeder.wait_for(ready_seeder, 30, "seeder ready")
        before = file_digest(dev, IMAGE_SIZE)
        assert_one_error_line(fetch(other.path, dev, tmp_path), "device is busy")
        assert file_digest(dev, IMAGE_SIZE) == before
    finally:
        seeder.stop()


@needs_loop
def test_partition_tables_are_never_written(manifest, tmp_path):
    """A whole disk with partitions, and an extended partition (its EBR chains the logical ones)."""
    backing = tmp_path / "disk.bin"
    with open(backing, "wb") as f:
        f.truncate(64 * MIB)
    layout = ("label: dos\nstart=2048,size=32768,type=83\nstart=34816,size=81920,type=5\n"
              "start=36864,size=16384,type=83\n")
    subprocess.run(["sfdisk", "-q", str(backing)], input=layout, text=True, check=True, capture_output=True)
    disk = subprocess.run(["losetup", "--find", "--show", "--partscan", str(backing)], check=True,
                          capture_output=True, text=True).stdout.strip()
    try:
        # This kernel may not parse partition tables itself; partx reads it and tells it.
        subprocess.run(["partx", "-a", disk], capture_output=True)
        extended, logical = disk + "p2", disk + "p5"
        wait_for_path(extended)
        wait_for_path(logical)
        before = file_digest(disk, 64 * MIB)
        assert_one_error_line(fetch(manifest.path, disk, tmp_path), "is a whole disk with partitions")
        assert_one_error_line(fetch(manifest.path, extended, tmp_path), "is an extended partition")
        assert file_digest(disk, 64 * MIB) == before, "the partition table or an EBR was written"
    finally:
        subprocess.run(["losetup", "-d", disk], capture_output=True)


def wait_for_path(path, timeout=10):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.05)


@needs_loop
def test_a_seeder_whose_image_has_a_wrong_byte_says_which_piece(tmp_path, image_factory):
    image = image_factory(size=8 * MIB, seed=43, name="img")
    manifest, _ = create_manifest(image, str(tmp_path), piece_size=256 * 1024)
    # Piece 5 is not one the seed's start-up spot check samples (0, 4, 8, ..., 31).
    with open(image, "r+b") as f:
        f.seek(5 * 256 * 1024 + 77)
        f.write(b"\x00" if f.read(1) != b"\x00" else b"\x01")
    seed_port = free_port()
    seeder = Proc("seed", manifest.path, image, "--listen", f"127.0.0.1:{seed_port}", log_path=tmp_path / "seed")
    fetcher = None
    try:
        seeder.wait_for(ready_seeder, 30, "seeder ready")
        fetcher = Proc("fetch", manifest.path, tmp_path / "t.img", "--peer", f"127.0.0.1:{seed_port}",
                       "--state-dir", tmp_path / "state", "--listen", f"127.0.0.1:{free_port()}",
                       "--stall-timeout", "20", log_path=tmp_path / "fetch")
        assert seeder.wait_exit(30, "seeder failing on the wrong piece") == 1
        assert "piece 5 does not match manifest img" in seeder.stderr().strip().splitlines()[-1], seeder.stderr()
    finally:
        seeder.stop()
        if fetcher:
            fetcher.stop()
