"""The modules, run by ansible for real against a real agent and real loop devices.

Each module: check → apply → idempotent → idempotent check (the community.crypto pattern),
and every refusal fails with its one line and writes nothing."""
import os
import subprocess

import pytest

from agent_helpers import AgentProc
from conftest import MIB, needs_loop
from module_helpers import collections_path, run_module
from swarm_helpers import file_digest, free_port


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
