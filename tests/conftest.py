"""Fixtures and hooks only: real loop devices, real images, processes stopped at the end, the
session's virtual lab. What tests import lives in the ``helpers`` package beside this file."""
import os
import shutil
import subprocess
import sys

import pytest

from helpers import LAB_SKIP_REASON, LOOP_SKIP_REASON, MIB, SESSION_LAB, random_image, run_cli
from helpers.collection import ROOT, importable

importable()
sys.path.insert(0, ROOT)  # the lab's package (lab/), which the lab fixture and helpers.lab_handle import


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


# ---- the virtual lab (docs/lab.md): one lab per test session, shared by every module ----

@pytest.fixture(scope="session")
def lab():
    """A running lab (LabHandle), brought up once per session and taken down at its end."""
    if LAB_SKIP_REASON:
        pytest.skip(LAB_SKIP_REASON)
    from lab import lab as labmod
    from helpers.lab_handle import LabHandle
    name = f"pytest{os.getpid()}"
    state = labmod.up(name, **SESSION_LAB)
    try:
        yield LabHandle(state)
    finally:
        labmod.down(name)
