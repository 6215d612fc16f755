"""Every refusal that protects a terminal: the error names the problem and the target is untouched."""
import errno
import hashlib
import os
import shutil
import stat
import subprocess
import uuid

import pytest

from helpers import MIB, needs_loop, run_cli
from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine import image
from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.errors import TargetRefused
from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.metainfo import create_manifest

IMAGE_SIZE = 4 * MIB


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.fixture
def manifest(tmp_path, image_factory):
    m, _ = create_manifest(image_factory(size=IMAGE_SIZE, seed=31, name="img"), str(tmp_path),
                           piece_size=256 * 1024)
    return m


@pytest.fixture
def filled_loop(loop_factory, image_factory):
    """A loop device of ``size`` bytes holding random data, so 'untouched' is meaningful."""
    def make(size):
        return loop_factory(size, fill=image_factory(size=size, seed=size % 97, name=f"fill{size}"))
    return make


@pytest.fixture
def mounted_loop(loop_factory, tmp_path):
    if not shutil.which("mkfs.ext4"):
        pytest.skip("mkfs.ext4 (e2fsprogs) is not installed")
    dev = loop_factory(16 * MIB)
    # No lazy init: a kernel thread zeroing inode tables later would change the bytes
    # this test proves untouched.
    subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", dev],
                   check=True, capture_output=True)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    # Read-only so the file system itself cannot write the device while bytes are compared.
    subprocess.run(["mount", "-o", "ro", dev, str(mnt)], check=True, capture_output=True)
    yield dev, str(mnt)
    subprocess.run(["umount", str(mnt)], capture_output=True)


@pytest.fixture
def absent_dev_path():
    path = f"/dev/p2pfleet-test-{uuid.uuid4().hex[:12]}"
    yield path
    # Only reached if the refusal broke: do not leave a regular file in devtmpfs.
    if os.path.lexists(path):
        os.unlink(path)
        pytest.fail(f"a regular file was created at {path}")


def assert_refused(path, needed, match, require_device=False):
    before = sha256(path)
    with pytest.raises(TargetRefused, match=match):
        image.claim_target(path, needed, require_device=require_device)
    assert sha256(path) == before


# --- image.claim_target / check_device_target ---------------------------------------------

@needs_loop
def test_mounted_device_is_refused(mounted_loop):
    dev, mnt = mounted_loop
    with pytest.raises(TargetRefused, match=f"mounted \\(on {mnt}\\)"):
        image.check_device_target(dev, os.stat(dev).st_rdev, 16 * MIB, IMAGE_SIZE)
    assert_refused(dev, IMAGE_SIZE, "is mounted")


@needs_loop
def test_too_small_device_is_refused(filled_loop):
    dev = filled_loop(MIB)
    assert_refused(dev, IMAGE_SIZE, f"holds {MIB} bytes but the image needs {IMAGE_SIZE}; choose a larger partition")


@needs_loop
def test_device_opened_exclusively_elsewhere_is_refused(filled_loop):
    dev = filled_loop(IMAGE_SIZE)
    holder = os.open(dev, os.O_RDONLY | os.O_EXCL)
    try:
        assert_refused(dev, IMAGE_SIZE, "busy")
    finally:
        os.close(holder)


@needs_loop
def test_swap_device_is_refused(filled_loop):
    dev = filled_loop(16 * MIB)
    if subprocess.run(["mkswap", dev], capture_output=True).returncode != 0:
        pytest.skip("mkswap is unavailable")
    if subprocess.run(["swapon", dev], capture_output=True).returncode != 0:
        pytest.skip("swapon is not permitted here")
    try:
        assert_refused(dev, IMAGE_SIZE, "swap")
    finally:
        subprocess.run(["swapoff", dev], capture_output=True)


@needs_loop
def test_free_device_of_the_right_size_is_claimed_exclusively(filled_loop):
    dev = filled_loop(IMAGE_SIZE)
    with image.claim_target(dev, IMAGE_SIZE) as target:
        assert target.info.is_device and target.info.size == IMAGE_SIZE
        with pytest.raises(OSError):
            os.close(os.open(dev, os.O_RDONLY | os.O_EXCL))
    os.close(os.open(dev, os.O_RDONLY | os.O_EXCL))


def test_missing_path_under_dev_is_refused_and_not_created(absent_dev_path):
    with pytest.raises(TargetRefused, match="does not exist; a device target must be an existing block device"):
        image.claim_target(absent_dev_path, IMAGE_SIZE)
    assert not os.path.lexists(absent_dev_path)


def test_dev_spelled_with_a_double_slash_is_still_dev(absent_dev_path):
    with pytest.raises(TargetRefused, match="block device"):
        image.claim_target("/" + absent_dev_path, IMAGE_SIZE)
    assert not os.path.lexists(absent_dev_path)


def test_path_through_a_symlink_into_dev_is_still_dev(tmp_path, absent_dev_path):
    link = tmp_path / "devices"
    link.symlink_to("/dev")
    with pytest.raises(TargetRefused, match="block device"):
        image.claim_target(str(link / os.path.basename(absent_dev_path)), IMAGE_SIZE)
    assert not os.path.lexists(absent_dev_path)


def test_character_device_is_refused():
    with pytest.raises(TargetRefused, match="is not a block device"):
        image.claim_target("/dev/null", IMAGE_SIZE)


def test_require_device_refuses_a_regular_file_and_does_not_grow_it(tmp_path):
    path = tmp_path / "small.img"
    path.write_bytes(b"keep me")
    assert_refused(str(path), IMAGE_SIZE, "is not a block device", require_device=True)
    assert path.stat().st_size == len(b"keep me")


def test_require_device_refuses_a_missing_path_and_does_not_create_it(tmp_path):
    path = tmp_path / "absent.img"
    with pytest.raises(TargetRefused, match="does not exist"):
        image.claim_target(str(path), IMAGE_SIZE, require_device=True)
    assert not path.exists()


def test_directory_is_refused(tmp_path):
    with pytest.raises(TargetRefused, match="not a regular file or block device"):
        image.claim_target(str(tmp_path), IMAGE_SIZE)


def test_file_in_a_missing_directory_is_refused(tmp_path):
    with pytest.raises(TargetRefused, match="does not exist"):
        image.claim_target(str(tmp_path / "no" / "img"), IMAGE_SIZE)
    assert not (tmp_path / "no").exists()


def test_file_target_is_grown_never_shrunk(tmp_path):
    new = tmp_path / "new.img"
    with image.claim_target(str(new), IMAGE_SIZE) as target:
        assert target.info.size == IMAGE_SIZE
    assert new.stat().st_size == IMAGE_SIZE
    big = tmp_path / "big.img"
    big.write_bytes(b"x" * (IMAGE_SIZE + 5))
    with image.claim_target(str(big), IMAGE_SIZE):
        pass
    assert big.read_bytes() == b"x" * (IMAGE_SIZE + 5)
    small = tmp_path / "small.img"
    small.write_bytes(b"y" * 1000)
    with image.claim_target(str(small), IMAGE_SIZE) as target:
        assert target.info.size == IMAGE_SIZE
    data = small.read_bytes()
    assert len(data) == IMAGE_SIZE and data[:1000] == b"y" * 1000 and data[1000:] == bytes(IMAGE_SIZE - 1000)


@pytest.mark.parametrize("err", [errno.EFBIG, errno.ENOSPC, errno.EDQUOT, errno.EIO])
def test_a_file_target_that_cannot_grow_is_refused_and_left_as_it_was(tmp_path, monkeypatch, err):
    def fail(fd, length):
        raise OSError(err, os.strerror(err))
    monkeypatch.setattr(image.os, "ftruncate", fail)
    new = tmp_path / "new.img"
    with pytest.raises(TargetRefused, match=f"new.img: cannot grow the file .*: {os.strerror(err)}$"):
        image.claim_target(str(new), IMAGE_SIZE)
    assert not new.exists(), "the file the claim created was left behind"
    small = tmp_path / "small.img"
    small.write_bytes(b"y" * 1000)
    with pytest.raises(TargetRefused, match="cannot grow the file"):
        image.claim_target(str(small), IMAGE_SIZE)
    assert small.read_bytes() == b"y" * 1000
    with image.claim_target(str(small), 1000):  # the refused claim let go of its lock
        pass


def test_second_claim_on_the_same_file_is_refused(tmp_path):
    path = str(tmp_path / "img")
    with image.claim_target(path, IMAGE_SIZE):
        with pytest.raises(TargetRefused, match="another job"):
            image.claim_target(path, IMAGE_SIZE)


def _running_root_device():
    """The /dev node of the block device '/' is on, or None when there is none to find."""
    devno = os.stat("/").st_dev
    try:
        with open(f"/sys/dev/block/{os.major(devno)}:{os.minor(devno)}/uevent", encoding="ascii") as f:
            fields = dict(line.strip().split("=", 1) for line in f if "=" in line)
    except OSError:
        return None
    path = "/dev/" + fields.get("DEVNAME", "")
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISBLK(st.st_mode) or st.st_rdev != devno:
        return None
    return path


def test_running_root_is_refused():
    root = _running_root_device()
    if root is None:
        pytest.skip("'/' is not on a block device with a /dev node (overlay, btrfs subvolume, container)")
    rdev = os.stat(root).st_rdev
    with open(f"/sys/dev/block/{os.major(rdev)}:{os.minor(rdev)}/size", encoding="ascii") as f:
        size = int(f.read()) * 512
    # The check that protects the root must refuse on its own before claim_target is
    # trusted with the root device at all; claim_target never opens it for writing, and
    # refuses it before opening it at all (a sandbox may forbid even a read-only open).
    with pytest.raises(TargetRefused, match="running root"):
        image.check_device_target(root, rdev, size, IMAGE_SIZE)
    with pytest.raises(TargetRefused, match="running root"):
        image.claim_target(root, IMAGE_SIZE, require_device=True)


# --- the same refusals through the CLI -----------------------------------------------------

def fetch(manifest, target, tmp_path):
    return run_cli("fetch", manifest.path, target, "--peer", "127.0.0.1:1",
                   "--listen", "127.0.0.1:0", "--state-dir", tmp_path / "state", timeout=60)


def assert_one_error_line(proc, match):
    assert proc.returncode == 1, proc.stderr
    # Progress lines may precede it; the failure itself is one line, and the last.
    errors = [line for line in proc.stderr.splitlines() if line.startswith("p2pfleet:")]
    assert len(errors) == 1 and errors[0].startswith("p2pfleet: error: "), proc.stderr
    assert proc.stderr.rstrip().endswith(errors[0])
    assert match in errors[0]
    assert "Traceback" not in proc.stderr


@needs_loop
def test_cli_fetch_refuses_a_mounted_target(manifest, mounted_loop, tmp_path):
    dev, _ = mounted_loop
    before = sha256(dev)
    assert_one_error_line(fetch(manifest, dev, tmp_path), "is mounted")
    assert sha256(dev) == before


@needs_loop
def test_cli_fetch_refuses_a_too_small_device(manifest, filled_loop, tmp_path):
    dev = filled_loop(MIB)
    before = sha256(dev)
    assert_one_error_line(fetch(manifest, dev, tmp_path), "choose a larger partition")
    assert sha256(dev) == before


def test_cli_fetch_refuses_a_missing_dev_path(manifest, tmp_path, absent_dev_path):
    assert_one_error_line(fetch(manifest, absent_dev_path, tmp_path), "block device")


def garble(manifest):
    raw = open(manifest.torrent_path, "rb").read()
    with open(manifest.torrent_path, "wb") as f:
        f.write(raw[:100])


def test_cli_verify_with_a_corrupt_torrent_fails(manifest):
    garble(manifest)
    assert_one_error_line(run_cli("verify", manifest.path, manifest.source["path"]), "corrupt")


def test_cli_fetch_with_a_corrupt_torrent_fails_before_touching_the_target(manifest, tmp_path):
    garble(manifest)
    target = tmp_path / "target.img"
    assert_one_error_line(fetch(manifest, target, tmp_path), "corrupt")
    assert not target.exists()


def test_cli_verify_of_the_wrong_image_fails(manifest, image_factory):
    other = image_factory(size=IMAGE_SIZE, seed=32, name="other")
    assert_one_error_line(run_cli("verify", manifest.path, other), "does not match")


def test_cli_seed_of_the_wrong_image_fails_at_start(manifest, image_factory):
    other = image_factory(size=IMAGE_SIZE, seed=33, name="other")
    proc = run_cli("seed", manifest.path, other, "--listen", "127.0.0.1:0", timeout=60)
    assert_one_error_line(proc, "does not hold the image of manifest img")


def test_cli_seed_of_a_too_small_image_fails_at_start(manifest, image_factory):
    other = image_factory(size=IMAGE_SIZE // 2, seed=31, name="half")
    proc = run_cli("seed", manifest.path, other, "--listen", "127.0.0.1:0", timeout=60)
    assert_one_error_line(proc, f"holds {IMAGE_SIZE // 2} bytes")


@needs_loop
def test_image_file_backing_a_loop_device_is_refused(tmp_path):
    backing = tmp_path / "attached.img"
    backing.write_bytes(b"\1" * (4 * MIB))
    dev = subprocess.run(["losetup", "--find", "--show", str(backing)], check=True,
                         capture_output=True, text=True).stdout.strip()
    try:
        with pytest.raises(TargetRefused, match=f"attached to {dev}"):
            image.claim_target(str(backing), 4 * MIB)
    finally:
        subprocess.run(["losetup", "-d", dev], check=True)
    assert backing.read_bytes() == b"\1" * (4 * MIB)
