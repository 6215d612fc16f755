"""Input a careless or hostile user gives: one error line, no traceback, nothing written.

Each test names a class of bad input (issue: hardening) and tries several members of it.
"""
import json
import os
import subprocess
import time

import pytest

from helpers import MIB, needs_loop, run_cli
from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.metainfo import create_manifest
from helpers.swarm import Proc, file_digest, free_port, ready_seeder

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


# -- gaps found by the audit of issue 12 -------------------------------------------------------

def existing_smaller_target(tmp_path, name="small.img", size=64 * 1024):
    """A regular-file target smaller than the image, holding data: it must stay as it was."""
    path = tmp_path / name
    path.write_bytes(os.urandom(size))
    return path, file_digest(path, size), size


def assert_unchanged(path, digest, size):
    assert os.path.getsize(path) == size, f"{path} was grown or shrunk"
    assert file_digest(path, size) == digest, f"{path} was written"


@pytest.mark.parametrize("name, change, words", [
    ("source-string", lambda d: d.update(source="ab"), ["source must be a mapping"]),
    ("digest-string", lambda d: d.update(digest="ab"), ["digest must be a mapping"]),
    ("digest-value-list", lambda d: d["digest"].update(value=[1]), ["digest.value must be a string"]),
    ("files-mapping", lambda d: d.update(files={"a": 1}), ["files must be a list"]),
    ("file-entry-list", lambda d: d.update(files=[[0, 1]]), ["files[0] must be a mapping"]),
    ("file-offset-string", lambda d: d["files"][0].update(offset="0"), ["files[0].offset must be an integer"]),
    ("file-size-nan", lambda d: d["files"][0].update(size=float("nan")), ["files[0].size must be an integer"]),
    ("file-path-missing", lambda d: d["files"][0].pop("path"), ["no field files[0].path"]),
    ("created-list", lambda d: d.update(created=["x"]), ["created must be a string"]),
    ("name-number", lambda d: d.update(name=5), ["name must be a string"]),
    ("size-bool", lambda d: d.update(image_size=True), ["image_size must be an integer"]),
])
def test_manifest_fields_of_the_wrong_type_are_one_line_naming_the_field(manifest, tmp_path, name, change, words):
    path = edited(manifest, tmp_path, name + ".manifest.json", change)
    target, digest, size = existing_smaller_target(tmp_path)
    assert_one_error_line(fetch(path, target, tmp_path), *words)
    assert_unchanged(target, digest, size)
    assert_one_error_line(fetch(path, tmp_path / "new.img", tmp_path), *words)
    assert not (tmp_path / "new.img").exists()
    assert_one_error_line(run_cli("verify", path, manifest.source["path"]), *words)


def limited_fetch(manifest_path, target, tmp_path, file_size_limit):
    """A fetch under ``ulimit -f``: growing the target fails with EFBIG."""
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))
    from helpers import P2PFLEET
    return subprocess.run(P2PFLEET + ["fetch", str(manifest_path), str(target), "--peer", "127.0.0.1:1",
                                      "--state-dir", str(tmp_path / "state"), "--listen", f"127.0.0.1:{free_port()}"],
                          capture_output=True, text=True, timeout=60, preexec_fn=limit)


def test_a_file_target_that_cannot_grow_is_one_line_and_left_as_it_was(manifest, tmp_path):
    new = tmp_path / "new.img"
    assert_one_error_line(limited_fetch(manifest.path, new, tmp_path, 1 * MIB), "cannot grow the file", "File too large")
    assert not new.exists(), "the target this fetch created was left behind"
    target, digest, size = existing_smaller_target(tmp_path)
    assert_one_error_line(limited_fetch(manifest.path, target, tmp_path, 1 * MIB), "cannot grow the file")
    assert_unchanged(target, digest, size)


def rewrite_torrent(manifest, tmp_path, name, change_info, change_manifest=None):
    """A manifest and torrent pair that agree with each other (info-hash included) but whose
    torrent was changed by ``change_info``."""
    import hashlib

    from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine import bencode
    meta = bencode.decode(open(manifest.torrent_path, "rb").read())
    change_info(meta[b"info"])
    torrent = tmp_path / f"{name}.torrent"
    torrent.write_bytes(bencode.encode(meta))

    def change(d):
        d.update(torrent=torrent.name, info_hash=hashlib.sha1(bencode.encode(meta[b"info"])).hexdigest())
        if change_manifest:
            change_manifest(d)
    return edited(manifest, tmp_path, name + ".manifest.json", change)


def _negative_split(info):
    length = info.pop(b"length")
    info[b"files"] = [{b"length": length + 256 * 1024, b"path": [b"a"]}, {b"length": -256 * 1024, b"path": [b"b"]}]


def _negative_split_manifest(d):
    size = d["image_size"]
    d["files"] = [{"path": "a", "offset": 0, "size": size + 256 * 1024},
                  {"path": "b", "offset": size + 256 * 1024, "size": -256 * 1024}]


@pytest.mark.parametrize("name, change_info, change_manifest, words", [
    # Passes the engine's own checks; libtorrent refuses it.
    ("nameless", lambda i: i.update({b"name": b""}), None, ["libtorrent rejects the torrent"]),
    # A split layout with a negative file that still sums to the image size.
    ("negative-split", _negative_split, _negative_split_manifest, ["files[0].size", "out of range"]),
])
def test_an_impossible_torrent_never_creates_or_grows_a_target(manifest, tmp_path, name, change_info,
                                                               change_manifest, words):
    path = rewrite_torrent(manifest, tmp_path, name, change_info, change_manifest)
    target, digest, size = existing_smaller_target(tmp_path)
    assert_one_error_line(fetch(path, target, tmp_path), *words)
    assert_unchanged(target, digest, size)
    assert_one_error_line(fetch(path, tmp_path / "new.img", tmp_path), *words)
    assert not (tmp_path / "new.img").exists()


def attach_loop(path):
    return subprocess.run(["losetup", "--find", "--show", str(path)], check=True, capture_output=True,
                          text=True).stdout.strip()


@needs_loop
def test_a_loop_device_over_what_the_job_reads_is_not_a_target(manifest, tmp_path, image_factory):
    """The loop device's backing file is the manifest, the torrent, or an image being seeded."""
    # A small image, and its manifest padded past the image size: a loop device over the
    # manifest is large enough to take the image, so only the overlap refuses it.
    other, _ = create_manifest(image_factory(size=64 * 1024, seed=44, name="other"), str(tmp_path),
                               piece_size=16 * 1024)
    with open(other.path, "a") as f:
        f.write(" " * 128 * 1024)
    image = manifest.source["path"]
    devices = []
    seeder = Proc("seed", manifest.path, image, "--listen", f"127.0.0.1:{free_port()}", log_path=tmp_path / "seed")
    try:
        for own in (other.path, other.torrent_path):
            devices.append(attach_loop(own))
            before = file_digest(own, os.path.getsize(own))
            assert_one_error_line(fetch(other.path, devices[-1], tmp_path), "would overwrite", "which this job reads")
            assert file_digest(own, os.path.getsize(own)) == before, f"{own} was written"
        seeder.wait_for(ready_seeder, 30, "seeder ready")
        devices.append(attach_loop(image))
        before = file_digest(image, IMAGE_SIZE)
        assert_one_error_line(fetch(other.path, devices[-1], tmp_path), "is a loop device over",
                              "another job is seeding or writing")
        assert file_digest(image, IMAGE_SIZE) == before, "the image being seeded was written"
    finally:
        seeder.stop()
        for dev in devices:
            subprocess.run(["losetup", "-d", dev], capture_output=True)


def test_the_agent_answers_bad_manifests_and_overlapping_loop_targets_with_one_line(manifest, tmp_path):
    """Through the agent: 400 naming the field or the torrent, 409 for a loop device over the
    image its seed job reads; no traceback in its log, nothing written."""
    from ansible_collections.p2pfleet.imaging.plugins.module_utils._agent_client import AgentError
    from helpers.agent import AgentProc
    from helpers import LOOP_SKIP_REASON
    (tmp_path / "agent").mkdir()
    agent = AgentProc(tmp_path / "agent", free_port()).start()
    devices = []
    try:
        target, digest, size = existing_smaller_target(tmp_path)
        bad = [
            (edited(manifest, tmp_path, "source.manifest.json", lambda d: d.update(source="ab")),
             "source must be a mapping"),
            (edited(manifest, tmp_path, "offset.manifest.json", lambda d: d["files"][0].update(offset=[0])),
             "files[0].offset must be an integer"),
            (rewrite_torrent(manifest, tmp_path, "nameless", lambda i: i.update({b"name": b""})),
             "libtorrent rejects the torrent"),
        ]
        for path, words in bad:
            with pytest.raises(AgentError) as err:
                agent.client.put_fetch(str(path), str(target))
            assert err.value.status == 400 and words in str(err.value), (err.value.status, str(err.value))
            assert len(str(err.value).splitlines()) == 1
        assert_unchanged(target, digest, size)
        if LOOP_SKIP_REASON is None:
            image = manifest.source["path"]
            agent.client.put_seed(manifest.path, image)
            other, _ = create_manifest(str(tmp_path / "small.img"), str(tmp_path / "agent"))
            devices.append(attach_loop(image))
            before = file_digest(image, IMAGE_SIZE)
            with pytest.raises(AgentError) as err:
                agent.client.put_fetch(other.path, devices[-1])
            assert err.value.status == 409 and "overlaps" in str(err.value), (err.value.status, str(err.value))
            assert file_digest(image, IMAGE_SIZE) == before
        assert [j["action"] for j in agent.client.jobs()] == (["seed"] if devices else [])
        assert "Traceback" not in agent.log()
    finally:
        agent.stop()
        for dev in devices:
            subprocess.run(["losetup", "-d", dev], capture_output=True)


@pytest.mark.parametrize("command", ["tracker", "agent"])
def test_a_daemon_config_check_on_a_fifo_or_deep_yaml_is_one_line(tmp_path, command):
    fifo = tmp_path / "fifo.yml"
    os.mkfifo(fifo)
    deep = tmp_path / "deep.yml"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    for path, words in ((fifo, "not a regular file"), (deep, "nested deeper than"), ("/dev/zero", "not a regular file")):
        assert_one_error_line(run_cli(command, "--check", "--config", path, timeout=20), str(path), words)
