"""The modules, run by ansible for real against a real agent and real loop devices.

Each module: check → apply → idempotent → idempotent check (the community.crypto pattern),
and every refusal fails with its one line and writes nothing."""
import os
import subprocess
import uuid

import pytest

from helpers.agent import AgentProc
from helpers import MIB, needs_loop
from helpers.modules import collections_path, run_module
from helpers.swarm import file_digest, free_port


@pytest.fixture(scope="module")
def collections(tmp_path_factory):
    return collections_path(tmp_path_factory.mktemp("collections"))


@pytest.fixture
def agent(tmp_path):
    root = tmp_path / "agent"
    root.mkdir()
    proc = AgentProc(root, free_port(), seed_after_fetch=True).start()
    yield proc
    proc.stop()


def test_image_manifest_check_apply_idempotent(collections, tmp_path, image_factory):
    image = image_factory(8 * MIB, seed=51, name="release.img")
    args = {"image": image, "dest": str(tmp_path), "piece_size": "1M"}
    manifest = tmp_path / "release.img.manifest.json"

    check = run_module(collections, "image_manifest", args, check=True)
    assert check["changed"] is True and not check["failed"] and not manifest.exists(), check
    applied = run_module(collections, "image_manifest", args)
    assert applied["changed"] is True and applied["manifest"] == str(manifest), applied
    assert applied["piece_count"] == 8 and applied["image_size"] == 8 * MIB
    again = run_module(collections, "image_manifest", args)
    assert again["changed"] is False and again["info_hash"] == applied["info_hash"], again
    assert run_module(collections, "image_manifest", args, check=True)["changed"] is False

    refused = run_module(collections, "image_manifest", dict(args, piece_size="3M"))
    assert refused["failed"] and "piece size" in refused["msg"], refused
    missing = run_module(collections, "image_manifest", dict(args, image=str(tmp_path / "nope.img")))
    assert missing["failed"] and "no such file or device" in missing["msg"], missing


@needs_loop
def test_swarm_job_seed_and_fetch_check_apply_idempotent(collections, tmp_path, image_factory, loop_factory, agent):
    size = 8 * MIB
    image = image_factory(size, seed=52, name="release.img")
    manifest = run_module(collections, "image_manifest", {"image": image, "dest": str(tmp_path)})["manifest"]
    seed = {"action": "seed", "manifest": manifest, "image": image, "socket": agent.socket}

    assert run_module(collections, "swarm_job", seed, check=True)["changed"] is True
    assert agent.client.jobs() == [], "check mode put a job"
    applied = run_module(collections, "swarm_job", seed, diff=True)
    assert applied["changed"] is True and applied["job"]["action"] == "seed", applied
    assert run_module(collections, "swarm_job", seed)["changed"] is False
    assert run_module(collections, "swarm_job", seed, check=True)["changed"] is False

    # A second agent fetches it into a partition, through the module, waiting (a small image).
    other_root = tmp_path / "terminal"
    other_root.mkdir()
    terminal = AgentProc(other_root, free_port(), seed_after_fetch=True).start()
    try:
        target = loop_factory(size)
        fetch = {"manifest": manifest, "target": target, "socket": terminal.socket, "wait": True,
                 "peers": [f"127.0.0.1:{agent.client.info()['listen_port']}"]}
        assert run_module(collections, "swarm_job", fetch, check=True)["changed"] is True
        done = run_module(collections, "swarm_job", fetch)
        assert done["changed"] is True and done["job"]["state"] == "seeding", done
        assert file_digest(target, size) == file_digest(image, size)
        assert run_module(collections, "swarm_job", fetch)["changed"] is False
        info = run_module(collections, "swarm_job_info", {"manifest": manifest, "socket": terminal.socket})
        assert info["done"] is True and info["job"]["state"] == "seeding" and info["states"] == {"seeding": 1}

        stopped = run_module(collections, "swarm_job", dict(fetch, state="stopped", wait=False))
        assert stopped["changed"] is True and stopped["job"]["state"] == "stopped", stopped
        assert run_module(collections, "swarm_job", dict(fetch, state="stopped"))["changed"] is False
        assert run_module(collections, "swarm_job", dict(fetch, state="absent"), check=True)["changed"] is True
        assert run_module(collections, "swarm_job", dict(fetch, state="absent"))["changed"] is True
        assert run_module(collections, "swarm_job", dict(fetch, state="absent"))["changed"] is False
        assert terminal.client.jobs() == []
    finally:
        terminal.stop()


@needs_loop
def test_swarm_job_refusals_name_the_problem_and_write_nothing(collections, tmp_path, image_factory, loop_factory,
                                                               agent):
    image = image_factory(8 * MIB, seed=53, name="big.img")
    manifest = run_module(collections, "image_manifest", {"image": image, "dest": str(tmp_path)})["manifest"]
    small = loop_factory(4 * MIB)
    before = file_digest(small, 4 * MIB)
    root = subprocess.run(["findmnt", "-n", "-o", "SOURCE", "/"], capture_output=True, text=True).stdout.strip()
    cases = [
        ({"target": small}, "the image needs"),
        ({"target": "/dev/p2pfleet-no-such-slot"}, "does not exist"),
        ({"target": small, "socket": str(tmp_path / "no-agent.sock")}, "is the p2pfleet-agent service running"),
        ({"target": small, "manifest": str(tmp_path / "unknown.manifest.json")}, "no such manifest"),
    ]
    if root.startswith("/dev/") and os.path.exists(root):
        cases.append(({"target": root}, "running root"))
    for extra, words in cases:
        result = run_module(collections, "swarm_job", {"manifest": manifest, "socket": agent.socket, **extra})
        assert result["failed"] and words in result["msg"], (extra, result)
    assert file_digest(small, 4 * MIB) == before, "a refused job wrote to the partition"
    assert agent.client.jobs() == []
    missing = run_module(collections, "swarm_job", {"manifest": manifest, "socket": agent.socket})
    assert missing["failed"] and "target" in missing["msg"], missing


def test_swarm_job_modules_refuse_manifest_numbers_out_of_range_with_one_line(collections, tmp_path, image_factory,
                                                                             agent):
    """The modules read a manifest with the engine's range-checked reader: no traceback."""
    image = image_factory(4 * MIB, seed=54, name="num.img")
    manifest = run_module(collections, "image_manifest", {"image": image, "dest": str(tmp_path)})["manifest"]
    text = open(manifest).read()
    size = str(os.path.getsize(image))
    assert f'"image_size": {size}' in text
    target = tmp_path / "target.img"
    target.write_bytes(b"t" * 4096)
    cases = [("1e999", "image_size must be an integer"), ("NaN", "image_size must be an integer"),
             ("-5", "image_size -5 is out of range"), ("true", "image_size must be an integer"),
             (f'"{size}"', "image_size must be an integer")]
    for i, (value, words) in enumerate(cases):
        bad = tmp_path / f"bad{i}.manifest.json"
        bad.write_text(text.replace(f'"image_size": {size}', f'"image_size": {value}'))
        for name, args in (("swarm_job", {"target": str(target)}), ("swarm_job_info", {})):
            result = run_module(collections, name, {"manifest": str(bad), "socket": agent.socket, **args})
            assert result["failed"] and words in result["msg"], (name, value, result)
            assert "Traceback" not in result["msg"] and "\n" not in result["msg"].strip(), (name, value, result)
    assert target.read_bytes() == b"t" * 4096
    assert agent.client.jobs() == []


@pytest.fixture
def gpt_disk(gpt_disks):
    disk, _parts, labels = gpt_disks()
    return disk, dict(zip("AB", labels))


@needs_loop
def test_slot_info_finds_slots_by_label_and_refuses_what_does_not_match(collections, tmp_path, gpt_disk):
    disk, labels = gpt_disk
    slots = [{"name": "A", "partlabel": labels["A"]}, {"name": "B", "partlabel": labels["B"]}]
    grubenv = tmp_path / "grubenv"
    subprocess.run(["grub-editenv", str(grubenv), "create"], check=True)
    subprocess.run(["grub-editenv", str(grubenv), "set", "saved_entry=A", "next_entry=B"], check=True)

    info = run_module(collections, "slot_info", {"slots": slots, "boot": {"grubenv": str(grubenv)}})
    assert not info["failed"], info
    assert [(s["name"], s["device"], s["size"]) for s in info["slots"]] == [
        ("A", disk + "p1", 16 * MIB), ("B", disk + "p2", 24 * MIB)], info
    assert info["booted"] is None and info["inactive"] is None  # neither holds this machine's root
    assert info["boot_env"]["saved_entry"] == "A" and info["next_boot"] == "B"

    def refused(args, words):
        result = run_module(collections, "slot_info", args)
        assert result["failed"] and words in result["msg"], (args, result)

    refused({"slots": [slots[0], {"name": "B", "partlabel": "no-such-label-" + labels["A"]}]},
            "slot B: no partition has partlabel 'no-such-label-")
    refused({"slots": [slots[0], {"name": "B", "device": disk + "p1"}]}, "slot B: " + disk + "p1 is also slot A")
    refused({"slots": [slots[0], {"name": "B", "device": str(grubenv)}]}, "is not a block device")
    refused({"slots": slots, "target": "B", "image_size": 32 * MIB}, "the image needs")
    refused({"slots": slots, "target": "C"}, "no slot is named 'C'")

    root = subprocess.run(["findmnt", "-n", "-o", "SOURCE", "/"], capture_output=True, text=True).stdout.strip()
    if root.startswith("/dev/") and os.path.exists(root):
        running = [{"name": "A", "device": root}, slots[1]]
        info = run_module(collections, "slot_info", {"slots": running})
        assert info["booted"]["name"] == "A" and info["inactive"]["name"] == "B", info
        refused({"slots": running, "target": "A"}, "holds the running root file system")
        assert not run_module(collections, "slot_info", {"slots": running, "target": "B"})["failed"]


@needs_loop
def test_image_verify_passes_an_identical_slot_and_counts_wrong_pieces(collections, tmp_path, image_factory,
                                                                      loop_factory):
    size = 8 * MIB
    image = image_factory(size, seed=54, name="release.img")
    manifest = run_module(collections, "image_manifest", {"image": image, "dest": str(tmp_path),
                                                          "piece_size": "1M"})["manifest"]
    slot = loop_factory(size, fill=image)
    args = {"manifest": manifest, "target": slot}
    for check in (False, True):
        ok = run_module(collections, "image_verify", args, check=check)
        assert ok["verified"] is True and ok["changed"] is False and ok["bytes"] == size, ok
    with open(slot, "r+b") as f:
        for piece in (2, 6):
            f.seek(piece * MIB + 100)
            f.write(b"\xa5" * 8)
    wrong = run_module(collections, "image_verify", args)
    assert wrong["failed"] and wrong["verified"] is False, wrong
    assert wrong["bad_pieces"] == 2 and wrong["first_bad_pieces"] == [2, 6], wrong
    assert "2 of 8 pieces are wrong" in wrong["msg"]
    shorter = run_module(collections, "image_verify", {"manifest": manifest, "target": loop_factory(4 * MIB)})
    assert shorter["failed"] and "expected" in shorter["msg"], shorter


def running_root():
    """The running root's device node, which stands for the slot booted now (as slot_info
    tells it), or None where '/' is not on a block device with a node."""
    root = subprocess.run(["findmnt", "-n", "-o", "SOURCE", "/"], capture_output=True, text=True).stdout.strip()
    return root if root.startswith("/dev/") and os.path.exists(root) else None


def grub_env(tmp_path, *assignments):
    grubenv = tmp_path / "grub" / "grubenv"
    grubenv.parent.mkdir(exist_ok=True)
    subprocess.run(["grub-editenv", str(grubenv), "create"], check=True)
    if assignments:
        subprocess.run(["grub-editenv", str(grubenv), "set", *assignments], check=True)
    return grubenv


def boot_files(grubenv):
    """The boot environment's bytes: the block and the default file beside it."""
    return {p.name: p.read_bytes() for p in sorted(grubenv.parent.iterdir())}


@needs_loop
def test_boot_slot_next_confirm_reject_with_check_and_diff(collections, tmp_path, gpt_disks):
    root = running_root()
    if root is None:
        pytest.skip("'/' is not on a block device: no slot can be the one booted now")
    _disk, parts, _labels = gpt_disks()
    grubenv = grub_env(tmp_path)
    # A is the slot running now (this machine's root), B a partition of a loop disk.
    slots = [{"name": "A", "device": root, "boot_entry": "A"}, {"name": "B", "device": parts[1], "boot_entry": "B"}]

    def call(state, slot="B", check=False, **extra):
        return run_module(collections, "boot_slot", {"slot": slot, "slots": slots, "state": state,
                                                     "backend": "grub", "grubenv": str(grubenv), **extra},
                          check=check, diff=True)

    assert call("confirmed", "A")["changed"] is True
    predicted = call("next", check=True)
    assert predicted["changed"] is True and predicted["after"]["pending"] == "B", predicted
    assert "next_entry" not in grubenv.read_text(), "check mode wrote the environment block"
    tried = call("next")
    assert tried["changed"] is True and tried["before"]["pending"] is None and tried["after"]["pending"] == "B"
    assert "next_entry=B" in grubenv.read_text()
    assert call("next")["changed"] is False and call("next", check=True)["changed"] is False

    # B never ran here: only force confirms it.
    assert call("confirmed", check=True, force=True)["changed"] is True
    confirmed = call("confirmed", force=True)
    assert confirmed["changed"] is True and confirmed["after"] == {"backend": "grub", "default": "B",
                                                                   "pending": None, "current": None}, confirmed
    assert call("confirmed", force=True)["changed"] is False
    refused = call("rejected")
    assert refused["failed"] and "is the confirmed default" in refused["msg"], refused
    unknown = call("next", slot="C")
    assert unknown["failed"] and "'C' is not one of the slots (A, B)" in unknown["msg"], unknown
    back = call("confirmed", "A")
    assert back["changed"] is True and back["after"]["default"] == "A", back


@needs_loop
def test_boot_slot_refusals_name_the_slot_and_leave_the_boot_environment_alone(collections, tmp_path, gpt_disks):
    disk, parts, labels = gpt_disks()
    grubenv = grub_env(tmp_path, "saved_entry=A", "next_entry=B")
    (tmp_path / "grub" / "p2pfleet-default.cfg").write_text('set p2pfleet_default="A"\n')
    slots = [{"name": "A", "partlabel": labels[0]}, {"name": "B", "partlabel": labels[1]}]
    missing = [slots[0], {"name": "B", "device": "/dev/p2pfleet-no-such-slot-" + labels[1]}]

    def refused(slot, state, words, definitions=slots, **extra):
        before = boot_files(grubenv)
        for check in (True, False):
            result = run_module(collections, "boot_slot", {"slot": slot, "slots": definitions, "state": state,
                                                           "backend": "grub", "grubenv": str(grubenv), **extra},
                                check=check)
            assert result["failed"] and words in result["msg"], (slot, state, result)
            assert "\n" not in result["msg"].strip(), result
        assert boot_files(grubenv) == before, f"a refused {state} of {slot} changed the boot environment"

    # Neither slot holds this machine's root: confirming either would make a slot that never
    # booted the default (and GRUB's fallback).
    refused("B", "confirmed", "slot B: not confirmed, as it is not the slot booted now (no slot holds the running "
                              "root file system)")
    refused("A", "confirmed", "slot A: not confirmed, as it is not the slot booted now")
    refused("B", "confirmed", "force: true overrides")
    root = running_root()
    if root is not None:
        refused("B", "confirmed", "(the running system is slot A)", [{"name": "A", "device": root}, slots[1]])
    # A slot whose partition is gone is neither tried nor confirmed, even forced.
    refused("B", "next", "does not exist", missing)
    refused("B", "confirmed", "does not exist", missing, force=True)
    # A label on two partitions (a cloned disk plugged in): which one would boot is anyone's guess.
    _clone, clone_parts, _ = gpt_disks(clone_of=disk)
    refused("B", "next", f"slot A: partlabel {labels[0]!r} is on 2 partitions, {parts[0]} and {clone_parts[0]}")
    info = run_module(collections, "slot_info", {"slots": slots})
    assert info["failed"] and f"{parts[0]} and {clone_parts[0]}" in info["msg"], info

    # Dropping the pending try of B is allowed even with B's partition gone: it only makes the terminal safer.
    dropped = run_module(collections, "boot_slot", {"slot": "B", "slots": missing, "state": "rejected",
                                                    "backend": "grub", "grubenv": str(grubenv)})
    assert dropped["changed"] is True and dropped["after"]["pending"] is None, dropped
