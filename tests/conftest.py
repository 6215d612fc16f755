"""Shared fixtures: real loop devices, real images, the engine on sys.path."""
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "plugins", "module_utils"))
P2PFLEET = [sys.executable, os.path.join(ROOT, "bin", "p2pfleet")]

MIB = 1 << 20


def _loop_devices_usable():
    if os.geteuid() != 0:
        return "loop devices need root"
    if not shutil.which("losetup"):
        return "losetup (util-linux) is not installed"
    if not os.path.exists("/dev/loop-control"):
        return "/dev/loop-control is missing (no loop device support)"
    return None


LOOP_SKIP_REASON = _loop_devices_usable()
needs_loop = pytest.mark.skipif(LOOP_SKIP_REASON is not None, reason=LOOP_SKIP_REASON or "")


def random_image(path, size, seed=1):
    """A file of ``size`` pseudo-random bytes (deterministic per seed, incompressible)."""
    import random
    rng = random.Random(seed)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 4 * MIB)
            f.write(rng.randbytes(n))
            left -= n
    return str(path)


@pytest.fixture
def image_factory(tmp_path):
    def make(size=32 * MIB, seed=1, name="image.img"):
        return random_image(tmp_path / name, size, seed)
    return make


@pytest.fixture
def loop_factory(tmp_path):
    """Make loop devices backed by sparse files in tmp_path; all detached afterwards."""
    if LOOP_SKIP_REASON:
        pytest.skip(LOOP_SKIP_REASON)
    made = []

    def make(size, fill=None):
        backing = tmp_path / f"loop{len(made)}.bin"
        if fill is not None:
            shutil.copyfile(fill, backing)
            with open(backing, "r+b") as f:
                f.truncate(size)
        else:
            with open(backing, "wb") as f:
                f.truncate(size)
        dev = subprocess.run(["losetup", "--find", "--show", str(backing)],
                             check=True, capture_output=True, text=True).stdout.strip()
        made.append(dev)
        return dev

    yield make
    for dev in made:
        subprocess.run(["umount", dev], capture_output=True)
        subprocess.run(["losetup", "-d", dev], capture_output=True)


@pytest.fixture
def gpt_disks(tmp_path):
    """Make loop disks with a GPT of two slot partitions, named uniquely per call (labs on this
    machine use the usual names), their nodes made by partx as there is no udev here.

    ``make(sizes_mib=(16, 24))`` returns ``(disk, [partition, ...], labels)``;
    ``make(clone_of=disk)`` attaches a byte copy of that disk: same labels, same partition
    UUIDs, as a cloned disk or a stick made from a terminal's image. Detached afterwards.
    """
    if LOOP_SKIP_REASON:
        pytest.skip(LOOP_SKIP_REASON)
    made = {}

    def make(sizes_mib=(16, 24), clone_of=None):
        backing = tmp_path / f"gpt{len(made)}.bin"
        if clone_of is not None:
            shutil.copyfile(made[clone_of][0], backing)
            labels = made[clone_of][1]
        else:
            tag = os.urandom(4).hex()
            labels = [f"sys_{chr(ord('a') + i)}_{tag}" for i in range(len(sizes_mib))]
            with open(backing, "wb") as f:
                f.truncate((sum(sizes_mib) + 2) * MIB)
            layout = "label: gpt\n" + "".join(f"size={size}M, name={label}\n"
                                              for size, label in zip(sizes_mib, labels))
            subprocess.run(["sfdisk", "-q", str(backing)], input=layout, text=True, check=True, capture_output=True)
        disk = subprocess.run(["losetup", "--find", "--show", str(backing)], check=True, capture_output=True,
                              text=True).stdout.strip()
        made[disk] = (backing, labels)
        subprocess.run(["partx", "-a", disk], check=True, capture_output=True)
        return disk, [f"{disk}p{i + 1}" for i in range(len(labels))], labels

    yield make
    for disk in made:
        subprocess.run(["partx", "-d", disk], capture_output=True)
        subprocess.run(["losetup", "-d", disk], capture_output=True)


@pytest.fixture
def manifest_of(tmp_path):
    def make(image, *extra):
        out = tmp_path / "manifests"
        out.mkdir(exist_ok=True)
        run_cli("manifest", image, "--out", out, *extra, check=True)
        return str(out / (os.path.basename(image) + ".manifest.json"))
    return make


@pytest.fixture
def procs():
    started = []
    yield started
    for proc in started:
        proc.stop()


def run_cli(*args, timeout=120, check=False):
    """Run bin/p2pfleet; returns CompletedProcess with text output."""
    proc = subprocess.run(P2PFLEET + [str(a) for a in args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"p2pfleet {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


# ---- the virtual lab (docs/lab.md): one lab per test session, shared by every module ----

sys.path.insert(0, ROOT)
LAB_TOOLS = ("debootstrap", "systemd-nspawn", "grub-editenv", "sgdisk", "ssh")


def _lab_usable():
    if os.geteuid() != 0:
        return "the virtual lab needs root"
    missing = [t for t in LAB_TOOLS if not shutil.which(t)]
    return f"the virtual lab needs {', '.join(missing)} (make deps)" if missing else None


LAB_SKIP_REASON = _lab_usable()
needs_lab = pytest.mark.skipif(LAB_SKIP_REASON is not None, reason=LAB_SKIP_REASON or "")
# The session lab: 1 server + 4 terminals in 2 rooms; links and uplinks capped so the rate tests
# measure something (the caps are far above what the other tests send).
SESSION_LAB = {"terminals": 4, "rooms": 2, "rate": "100mbit", "uplink": "150mbit", "slot_size": "1G"}


@pytest.fixture(scope="session")
def lab():
    """A running lab (LabHandle), brought up once per session and taken down at its end."""
    if LAB_SKIP_REASON:
        pytest.skip(LAB_SKIP_REASON)
    from lab import lab as labmod
    from lab_helpers import LabHandle
    name = f"pytest{os.getpid()}"
    state = labmod.up(name, **SESSION_LAB)
    try:
        yield LabHandle(state)
    finally:
        labmod.down(name)
