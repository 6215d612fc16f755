"""Options renamed to the collection's one name per concept (issue 21): the old name still
works for one release and Ansible warns naming the new one; the new name works silently.

Self-contained on purpose (the test helpers are moving): the collection is found through a
temporary ``ansible_collections/p2pfleet/imaging`` link to the checkout, and each module runs
as an ``ansible`` ad-hoc call on localhost under the system Python, deprecation warnings on."""
import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ANSIBLE = os.path.join(os.path.dirname(sys.executable), "ansible")


@pytest.fixture(scope="module")
def collections(tmp_path_factory):
    top = tmp_path_factory.mktemp("collections")
    (top / "ansible_collections" / "p2pfleet").mkdir(parents=True)
    (top / "ansible_collections" / "p2pfleet" / "imaging").symlink_to(ROOT)
    return str(top)


def run(collections, module, args):
    """(result, the deprecation warnings Ansible printed) of one module call."""
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=collections, ANSIBLE_DEPRECATION_WARNINGS="True",
               ANSIBLE_LOCALHOST_WARNING="False", ANSIBLE_INVENTORY_UNPARSED_WARNING="False", ANSIBLE_NOCOLOR="1")
    proc = subprocess.run([ANSIBLE, "localhost", "-c", "local", "-e", "ansible_python_interpreter=/usr/bin/python3",
                           "-m", f"p2pfleet.imaging.{module}", "-a", json.dumps(args)],
                          capture_output=True, text=True, timeout=120, env=env, check=False)
    out = proc.stdout + proc.stderr
    start = proc.stdout.find("=> {")
    assert start >= 0, out
    result, _end = json.JSONDecoder().raw_decode(proc.stdout[start + 3:])
    result.setdefault("failed", proc.returncode != 0)
    warnings = " ".join(" ".join(line.split()) for line in out.splitlines() if "DEPRECATION WARNING" in line)
    return result, warnings


@pytest.fixture
def two_slots(tmp_path):
    """Slots A and B on two small loop devices (neither holds the running root)."""
    if os.geteuid() != 0 or not shutil.which("losetup"):
        pytest.skip("needs root and losetup for loop devices")
    devices = []
    try:
        for name in ("a", "b"):
            backing = tmp_path / f"slot_{name}.img"
            with open(backing, "wb") as f:
                f.truncate(4 << 20)
            devices.append(subprocess.run(["losetup", "--find", "--show", str(backing)], capture_output=True,
                                          text=True, check=True).stdout.strip())
        yield [{"name": "A", "device": devices[0]}, {"name": "B", "device": devices[1]}]
    finally:
        for device in devices:
            subprocess.run(["losetup", "-d", device], check=False)


def test_slot_info_takes_the_slot_as_slot_and_still_as_target_with_a_warning(collections, two_slots):
    new, warned = run(collections, "slot_info", {"slots": two_slots, "slot": "C"})
    assert "no slot is named 'C'" in new["msg"] and not warned

    old, warned = run(collections, "slot_info", {"slots": two_slots, "target": "C"})
    assert "no slot is named 'C'" in old["msg"]
    assert "option 'target' is now called 'slot'" in warned and "0.3.0" in warned

    # The old name's value reaches the check the new name's does.
    for name in ("slot", "target"):
        too_big, _warned = run(collections, "slot_info", {"slots": two_slots, name: "A", "image_size": 1 << 30})
        assert too_big["failed"] and "the image needs 1073741824" in too_big["msg"], too_big


@pytest.mark.parametrize("module, args", [
    ("swarm_job", {"manifest": "/nonexistent/release.img.manifest.json", "target": "/dev/null"}),
    ("reimage", {"step": "distribute", "manifest": "/nonexistent/release.img.manifest.json",
                 "slots": [{"name": "A", "device": "/dev/null"}], "socket": "/nonexistent/agent.sock"}),
])
def test_local_pieces_is_taken_and_local_sources_still_with_a_warning(collections, module, args):
    new, warned = run(collections, module, dict(args, local_pieces=False))
    assert "Unsupported parameters" not in new.get("msg", "") and not warned, new

    old, warned = run(collections, module, dict(args, local_sources=False))
    assert "Unsupported parameters" not in old.get("msg", ""), old
    assert "option 'local_sources' is now called 'local_pieces'" in warned and "0.3.0" in warned
