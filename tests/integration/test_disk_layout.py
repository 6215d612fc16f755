"""engine/layout.py on real loop devices: the GPT it writes is the one sgdisk and sfdisk read,
a disk laid out already is left alone, and a disk that holds anything — or is in use — is
refused with one line and not a byte written."""
import hashlib
import json
import os
import subprocess

import pytest

from helpers import LOOP_SKIP_REASON
from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine import layout
from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.errors import P2PFleetError

pytestmark = pytest.mark.skipif(LOOP_SKIP_REASON is not None, reason=LOOP_SKIP_REASON or "")
MIB = 1 << 20
PARTS = [{"label": "boot", "size": "16M"}, {"label": "system_a"}, {"label": "system_b"},
         {"label": "p2pfleet_state", "size": "8M"}]


@pytest.fixture
def disk(tmp_path):
    """A blank loop disk of ``size`` MiB (detached with its partitions afterwards)."""
    made = []

    def make(size_mib=128):
        backing = tmp_path / f"disk{len(made)}.img"
        with open(backing, "wb") as f:
            f.truncate(size_mib * MIB)
        dev = subprocess.run(["losetup", "--find", "--show", str(backing)], check=True, capture_output=True,
                             text=True).stdout.strip()
        made.append(dev)
        return dev

    yield make
    for dev in made:
        subprocess.run(["umount", "--quiet", f"{dev}p1"], capture_output=True)
        subprocess.run(["partx", "-d", dev], capture_output=True)
        subprocess.run(["losetup", "-d", dev], capture_output=True)


def lay_out(path, parts=PARTS, wipe=False):
    """What the module does: (whether it wrote, the partitions' nodes)."""
    found = layout.inspect(path)
    laid = layout.plan(found, layout.parse_parts(parts))
    changed = layout.decide(found, laid, wipe)
    if changed:
        layout.write(found, laid)
    return changed, layout.nodes(found, laid)


def digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_an_empty_disk_gets_the_layout_that_sgdisk_and_sfdisk_read(disk):
    dev = disk(128)
    changed, nodes = lay_out(dev)
    assert changed and nodes == [f"{dev}p{n}" for n in (1, 2, 3, 4)]
    assert "No problems found" in subprocess.run(["sgdisk", "--verify", dev], capture_output=True, text=True).stdout
    table = json.loads(subprocess.run(["sfdisk", "--json", dev], check=True, capture_output=True, text=True).stdout)
    parts = table["partitiontable"]["partitions"]
    assert [p["name"] for p in parts] == ["boot", "system_a", "system_b", "p2pfleet_state"]
    sizes = [p["size"] * 512 // MIB for p in parts]
    assert sizes[0] == 16 and sizes[3] == 8 and sizes[1] == sizes[2] == (128 - 2 - 16 - 8) // 2
    assert all(p["start"] * 512 % MIB == 0 for p in parts)
    assert all(p["type"] == "0FC63DAF-8483-4772-8E79-3D69D8477DE4" for p in parts)
    # the kernel shows them, with the sizes of the table
    assert [int(open(f"/sys/class/block/{os.path.basename(n)}/size").read()) * 512 // MIB for n in nodes] == sizes


def test_a_disk_laid_out_already_is_left_alone(disk):
    dev = disk(64)
    assert lay_out(dev)[0]
    before = digest(dev)
    again, nodes = lay_out(dev)
    assert not again and len(nodes) == 4
    assert digest(dev) == before


@pytest.mark.parametrize("make_data, says", [
    (lambda dev: subprocess.run(["mkfs.ext4", "-q", "-F", dev], check=True), "an ext2/3/4 file system"),
    (lambda dev: subprocess.run(["sfdisk", "-q", dev], input="label: dos\nsize=8M\nsize=8M\n", text=True,
                                check=True), "an MBR partition table with 2 partition(s)"),
    (lambda dev: subprocess.run(["sgdisk", "-n", "1:0:+8M", "-c", "1:EFI system", "-n", "2:0:0", "-c", "2:root", dev],
                                check=True, capture_output=True), "a GPT with 2 partition(s): EFI system, root"),
    (lambda dev: _write(dev, -MIB // 2, b"old data"), "data in its last MiB"),
    (lambda dev: subprocess.run(["sgdisk", "--clear", dev], check=True, capture_output=True), "an empty GPT"),
])
def test_a_disk_that_holds_anything_is_refused_in_one_line_and_not_written(disk, make_data, says):
    dev = disk(64)
    make_data(dev)
    before = digest(dev)
    with pytest.raises(P2PFleetError) as refused:
        lay_out(dev)
    message = str(refused.value)
    assert message == f"{dev} holds data ({says}); nothing written: set wipe to erase it"
    assert digest(dev) == before
    assert lay_out(dev, wipe=True)[0]
    assert layout.inspect(dev).found == ()
    # the old file system's signature went with it, also where a new partition begins
    assert " TYPE=" not in subprocess.run(["blkid", "-p", f"{dev}p1"], capture_output=True, text=True).stdout


def _write(dev, offset, data):
    with open(dev, "r+b") as f:
        f.seek(offset, os.SEEK_END if offset < 0 else os.SEEK_SET)
        f.write(data)


def test_the_same_labels_in_another_layout_are_named_and_not_rewritten(disk):
    dev = disk(64)
    lay_out(dev)
    before = digest(dev)
    bigger = [dict(p, size="24M") if p["label"] == "boot" else p for p in PARTS]
    with pytest.raises(P2PFleetError, match=r"in another layout \(boot is 16 MiB at 1 MiB, not 24 MiB at 1 MiB; "
                                            r"system_a is \d+ MiB at 17 MiB, not \d+ MiB at 25 MiB"):
        lay_out(dev, bigger)
    assert digest(dev) == before


def test_a_disk_in_use_is_refused_even_with_wipe(disk):
    dev = disk(64)
    lay_out(dev)
    subprocess.run(["mkfs.ext4", "-q", "-F", f"{dev}p1"], check=True)
    mountpoint = f"/tmp/layout-test-{os.getpid()}"
    os.makedirs(mountpoint, exist_ok=True)
    subprocess.run(["mount", f"{dev}p1", mountpoint], check=True)
    try:
        before = digest(dev)
        with pytest.raises(P2PFleetError, match=f"^{dev}: is mounted \\(on {mountpoint}\\)"):
            lay_out(dev, PARTS[:2], wipe=True)
        assert digest(dev) == before
    finally:
        subprocess.run(["umount", mountpoint], check=True)
        os.rmdir(mountpoint)


def test_refusals_before_anything_is_read(disk, tmp_path):
    dev = disk(64)
    lay_out(dev)
    with pytest.raises(P2PFleetError, match=f"^{dev}p2: is a partition; name the whole disk$"):
        layout.inspect(f"{dev}p2")
    with pytest.raises(P2PFleetError, match="not a block device"):
        layout.inspect(str(tmp_path))
    small = layout.inspect(disk(16))
    with pytest.raises(P2PFleetError, match=r"16 MiB is too small for this layout \(boot 16 MiB, system_a \(the rest\)"):
        layout.plan(small, layout.parse_parts(PARTS))
    for bad, says in (([{"label": "a", "size": "12K"}], "is not a size like"),
                      ([{"label": "a"}, {"label": "a"}], "two partitions are labelled a"),
                      ([{"label": "x" * 37}], "a label of 1 to 36 characters"),
                      ([{"label": "a", "type": "ntfs"}], "is not one of linux, esp, bios_grub"),
                      ([], "at least one is needed")):
        with pytest.raises(P2PFleetError, match=says):
            layout.parse_parts(bad)


def test_an_esp_gets_its_type(disk):
    dev = disk(64)
    lay_out(dev, [{"label": "boot", "size": "16M", "type": "esp"}, {"label": "system_a"}])
    table = json.loads(subprocess.run(["sfdisk", "--json", dev], check=True, capture_output=True, text=True).stdout)
    assert table["partitiontable"]["partitions"][0]["type"] == "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
