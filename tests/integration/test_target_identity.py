"""Write only what was checked: a job writes the device it resolved, checked and holds, and
nothing else; what is on disk beats a stale record; the agent's own files are never targets.

Real ``p2pfleet agent`` processes, real libtorrent, real loop devices and GPT partitions.
Every refusal is proved by the digests of the devices that must stay untouched.
"""
import json
import os
import signal
import subprocess
import time

import pytest

from ansible_collections.p2pfleet.imaging.plugins.module_utils._agent_client import AgentError
from helpers.agent import AgentProc
from helpers import MIB, needs_loop
from helpers.swarm import file_digest, free_port, start_seeder

SIZE = 24 * MIB


@pytest.fixture
def agents():
    started = []
    yield started
    for agent in started:
        if agent.popen and agent.popen.poll() is None:
            agent.stop(signal.SIGKILL)


@pytest.fixture
def release(tmp_path, image_factory, manifest_of, procs):
    """An image, its manifest and a slow origin: a fetch of it is mid-transfer for seconds."""
    image = image_factory(SIZE, seed=17, name="release.img")
    manifest = manifest_of(image, "--piece-size", "1M")
    port = start_seeder(procs, tmp_path, manifest, image, "--upload-limit", str(2 * MIB))
    return image, manifest, f"127.0.0.1:{port}"


def new_agent(agents, tmp_path, name="agent"):
    root = tmp_path / name
    root.mkdir()
    agent = AgentProc(root, free_port(), seed_after_fetch=False)
    agents.append(agent)
    return agent.start()


def _wait_state(agent, job_id, state, timeout):
    deadline = time.monotonic() + timeout
    job = None
    while time.monotonic() < deadline:
        job = agent.client.job(job_id)
        if job is not None and job["state"] == state:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job not {state} within {timeout} s: {json.dumps(job)}\n{agent.log()[-3000:]}")


def record_of(agent, job_id):
    with open(os.path.join(agent.state_dir, "jobs", job_id + ".json"), encoding="utf-8") as f:
        return json.load(f)


def devno(path):
    st = os.stat(path)
    return f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"


def loop_number(dev):
    return int(dev.rsplit("loop", 1)[1])


# -- 1. a job writes into the device it checked, and nothing else -------------------------

@needs_loop
def test_a_symlinked_target_retargeted_mid_fetch_fails_and_the_other_device_gets_no_byte(
        tmp_path, release, loop_factory, agents):
    image, manifest, origin = release
    checked, other = loop_factory(SIZE), loop_factory(SIZE, fill=image_factory_fill(tmp_path, 3))
    other_before = file_digest(other, SIZE)
    link = tmp_path / "system_b"  # as /dev/disk/by-partlabel/system_b is: a symlink udev may move
    link.symlink_to(checked)
    agent = new_agent(agents, tmp_path)
    job_id = agent.client.put_fetch(manifest, str(link), peers=[origin])["job"]["id"]
    agent.wait_job(job_id, lambda j: j["percent"] >= 10, 60, "fetch at 10 %")

    tmp_link = tmp_path / "system_b.new"
    tmp_link.symlink_to(other)
    os.replace(tmp_link, link)  # atomically, as udev does
    job = _wait_state(agent, job_id, "failed", 15)

    assert f"now names device {devno(other)}, not the device {devno(checked)} this job checked" in job["error"]
    assert "\n" not in job["error"]
    assert file_digest(other, SIZE) == other_before, "the device the name moved to was written"
    assert record_of(agent, job_id)["state"] == "failed"


@needs_loop
def test_a_device_node_made_again_for_another_device_mid_fetch_fails_and_that_device_gets_no_byte(
        tmp_path, release, loop_factory, agents):
    image, manifest, origin = release
    checked, other = loop_factory(SIZE), loop_factory(SIZE, fill=image_factory_fill(tmp_path, 4))
    other_before = file_digest(other, SIZE)
    node = tmp_path / "slot-node"
    os.mknod(node, 0o600 | 0o060000, os.stat(checked).st_rdev)
    agent = new_agent(agents, tmp_path)
    job_id = agent.client.put_fetch(manifest, str(node), peers=[origin], require_device=True)["job"]["id"]
    agent.wait_job(job_id, lambda j: j["percent"] >= 10, 60, "fetch at 10 %")

    os.unlink(node)
    os.mknod(node, 0o600 | 0o060000, os.stat(other).st_rdev)
    job = _wait_state(agent, job_id, "failed", 15)

    assert f"now names device {devno(other)}" in job["error"], job["error"]
    assert file_digest(other, SIZE) == other_before


@needs_loop
def test_a_retargeted_name_while_the_agent_is_down_fails_the_resume_with_one_line(
        tmp_path, release, loop_factory, agents):
    image, manifest, origin = release
    checked, other = loop_factory(SIZE), loop_factory(SIZE, fill=image_factory_fill(tmp_path, 5))
    other_before = file_digest(other, SIZE)
    link = tmp_path / "system_b"
    link.symlink_to(checked)
    agent = new_agent(agents, tmp_path)
    job_id = agent.client.put_fetch(manifest, str(link), peers=[origin])["job"]["id"]
    agent.wait_job(job_id, lambda j: j["percent"] >= 10, 60, "fetch at 10 %")
    agent.stop(signal.SIGKILL)

    link.unlink()
    link.symlink_to(other)
    agent.start()
    job = _wait_state(agent, job_id, "failed", 15)

    assert (f"is not the target this job was writing (it was device {devno(checked)}, it is device "
            f"{devno(other)} now)") in job["error"], job["error"]
    assert file_digest(other, SIZE) == other_before
    # Failed for good: another restart does not try again.
    agent.stop(signal.SIGKILL)
    agent.start()
    assert agent.client.job(job_id)["state"] == "failed"
    assert file_digest(other, SIZE) == other_before


@needs_loop
def test_a_loop_number_given_to_another_file_while_the_agent_is_down_is_not_resumed_into(
        tmp_path, release, loop_factory, agents):
    image, manifest, origin = release
    target = loop_factory(SIZE)
    stranger = tmp_path / "stranger.bin"  # another disk of the same size that gets the same number
    subprocess.run(["cp", image_factory_fill(tmp_path, 6), stranger], check=True)
    stranger_before = file_digest(stranger, SIZE)
    agent = new_agent(agents, tmp_path)
    job_id = agent.client.put_fetch(manifest, target, peers=[origin])["job"]["id"]
    agent.wait_job(job_id, lambda j: j["percent"] >= 10, 60, "fetch at 10 %")
    agent.stop(signal.SIGKILL)

    number = os.stat(target).st_rdev
    subprocess.run(["losetup", "-d", target], check=True)
    subprocess.run(["losetup", target, str(stranger)], check=True)
    assert os.stat(target).st_rdev == number  # same path, same device number, same size
    agent.start()
    job = _wait_state(agent, job_id, "failed", 15)

    assert "its file behind the loop device was" in job["error"], job["error"]
    assert file_digest(stranger, SIZE) == stranger_before, "another disk was written after a restart"


@needs_loop
def test_a_loop_device_detached_mid_fetch_cannot_be_given_to_another_file_while_the_job_holds_it(
        tmp_path, release, loop_factory, agents):
    image, manifest, origin = release
    target = loop_factory(SIZE)
    backing = subprocess.run(["losetup", "-nO", "BACK-FILE", target], check=True, capture_output=True,
                             text=True).stdout.strip()
    stranger = tmp_path / "stranger.bin"
    subprocess.run(["cp", image_factory_fill(tmp_path, 7), stranger], check=True)
    stranger_before = file_digest(stranger, SIZE)
    agent = new_agent(agents, tmp_path)
    job_id = agent.client.put_fetch(manifest, target, peers=[origin])["job"]["id"]
    agent.wait_job(job_id, lambda j: j["percent"] >= 10, 60, "fetch at 10 %")

    subprocess.run(["losetup", "-d", target], check=True)  # only marked to go when its last user lets go
    reuse = subprocess.run(["losetup", target, str(stranger)], capture_output=True, text=True)
    assert reuse.returncode != 0, "the loop number was given to another file while the job held it"
    agent.wait_job(job_id, lambda j: j["state"] == "verified", 60, "fetch verified")
    assert file_digest(stranger, SIZE) == stranger_before
    assert file_digest(backing, SIZE) == file_digest(image, SIZE)  # the image is in the file it checked


@needs_loop
def test_a_partition_whose_gpt_changed_while_the_agent_is_down_is_not_resumed_into(
        tmp_path, release, gpt_disks, agents):
    image, manifest, origin = release
    disk, parts, _labels = gpt_disks((24, 24))
    agent = new_agent(agents, tmp_path)
    job_id = agent.client.put_fetch(manifest, parts[1], peers=[origin])["job"]["id"]
    agent.wait_job(job_id, lambda j: j["percent"] >= 10, 60, "fetch at 10 %")
    agent.stop(signal.SIGKILL)
    before = record_of(agent, job_id)["identity"]["part_uuid"]

    # The same disk, the same layout and device numbers, new partition GUIDs on disk: another
    # disk as far as the job knows (the kernel's partitions are left as they were).
    subprocess.run(["sgdisk", "-G", disk], check=True, capture_output=True)
    digest_before = file_digest(parts[1], SIZE)
    agent.start()
    job = _wait_state(agent, job_id, "failed", 15)

    assert f"its partition GUID was {before}" in job["error"], job["error"]
    assert file_digest(parts[1], SIZE) == digest_before


# -- 2. what is on disk beats a stale record ---------------------------------------------

@needs_loop
def test_a_job_that_cannot_resume_never_comes_back_over_a_slot_verified_meanwhile(
        tmp_path, release, image_factory, manifest_of, procs, loop_factory, agents):
    image, manifest, origin = release
    target = loop_factory(SIZE)
    agent = new_agent(agents, tmp_path)
    old_id = agent.client.put_fetch(manifest, target, peers=[origin])["job"]["id"]
    agent.wait_job(old_id, lambda j: j["percent"] >= 10, 60, "fetch at 10 %")
    agent.stop(signal.SIGKILL)

    backing = subprocess.run(["losetup", "-nO", "BACK-FILE", target], check=True, capture_output=True,
                             text=True).stdout.strip()
    subprocess.run(["losetup", "-d", target], check=True)  # the slot is gone at the restart
    agent.start()
    assert _wait_state(agent, old_id, "failed", 15)["error"].startswith("cannot resume:")
    assert record_of(agent, old_id)["state"] == "failed"

    subprocess.run(["losetup", target, backing], check=True)  # it comes back, same identity
    newer = image_factory(SIZE, seed=18, name="newer.img")
    newer_manifest = manifest_of(newer, "--piece-size", "1M")
    newer_origin = f"127.0.0.1:{start_seeder(procs, tmp_path, newer_manifest, newer)}"
    new_id = agent.client.put_fetch(newer_manifest, target, peers=[newer_origin])["job"]["id"]
    agent.wait_job(new_id, lambda j: j["state"] == "verified", 60, "newer release verified")
    agent.stop(signal.SIGKILL)  # a crash after the newer job verified

    agent.start()
    old = agent.client.job(old_id)
    assert old["state"] in ("failed", "stopped"), old
    new = agent.client.job(new_id)
    assert new["state"] == "verified" and new["downloaded"] >= SIZE, new  # counters survive the restart
    assert file_digest(target, SIZE) == file_digest(newer, SIZE), "the stale job wrote over the newer image"


@needs_loop
def test_a_verified_job_is_superseded_when_another_fetch_takes_its_target(
        tmp_path, release, image_factory, manifest_of, procs, loop_factory, agents):
    image, manifest, _slow = release
    fast = f"127.0.0.1:{start_seeder(procs, tmp_path, manifest, image)}"
    target = loop_factory(SIZE)
    agent = new_agent(agents, tmp_path)
    first = agent.client.put_fetch(manifest, target, peers=[fast])["job"]["id"]
    agent.wait_job(first, lambda j: j["state"] == "verified", 60, "first release verified")

    newer = image_factory(SIZE, seed=19, name="newer.img")
    newer_manifest = manifest_of(newer, "--piece-size", "1M")
    newer_origin = f"127.0.0.1:{start_seeder(procs, tmp_path, newer_manifest, newer)}"
    agent.client.put_fetch(newer_manifest, target, peers=[newer_origin])
    old = agent.client.job(first)
    assert old["state"] == "stopped" and old["error"].startswith(f"superseded: {target} is written by"), old
    assert record_of(agent, first)["state"] == "stopped"


# -- 3. the agent's own files are never targets --------------------------------------------

@needs_loop
def test_the_agents_own_files_are_refused_as_targets_and_stay_as_they_were(
        tmp_path, release, image_factory, manifest_of, loop_factory, agents):
    image, manifest, origin = release
    small = manifest_of(image_factory(MIB, seed=20, name="small.img"), "--piece-size", "256K")
    agent = new_agent(agents, tmp_path)
    job_id = agent.client.put_fetch(manifest, loop_factory(SIZE), peers=[origin])["job"]["id"]
    agent.client.stop(job_id)  # its record, manifest copy and resume data stay as they are now
    state = agent.state_dir
    record = os.path.join(state, "jobs", job_id + ".json")
    own = sorted(os.path.join(root, name) for root, _dirs, names in os.walk(state) for name in names)
    before = {path: file_digest(path, os.path.getsize(path)) for path in own}
    hard_link = tmp_path / "innocent.img"
    os.link(os.path.join(state, "jobs", job_id + ".manifest.json"), hard_link)
    over_record = subprocess.run(["losetup", "--find", "--show", record], check=True, capture_output=True,
                                 text=True).stdout.strip()
    try:
        refused = {
            record: "is inside the agent's state directory",
            os.path.join(state, "slots", "new.img"): "is inside the agent's state directory",
            os.path.join(state, "jobs"): "is inside the agent's state directory",
            str(hard_link): "of the agent's state directory under another name",
            over_record: "a file of the agent's state directory",
        }
        for target, why in refused.items():
            with pytest.raises(AgentError) as err:
                agent.client.put_fetch(small, target, peers=[origin])
            assert why in str(err.value) and "\n" not in str(err.value), (target, str(err.value))
    finally:
        subprocess.run(["losetup", "-d", over_record], capture_output=True)
    assert not os.path.exists(os.path.join(state, "slots", "new.img"))
    assert {path: file_digest(path, os.path.getsize(path)) for path in own if os.path.exists(path)} == {
        path: digest for path, digest in before.items() if os.path.exists(path)}


def image_factory_fill(tmp_path, seed):
    """A file of random bytes to fill a device that must stay untouched."""
    from helpers import random_image
    path = tmp_path / f"fill{seed}.bin"
    if not path.exists():
        random_image(path, SIZE, seed)
    return str(path)


# -- overlap is about bytes, not files ------------------------------------------------------

@needs_loop
def test_two_partitions_of_one_loop_disk_take_two_fetches_and_a_device_over_their_bytes_is_refused(
        tmp_path, release, image_factory, manifest_of, gpt_disks, agents):
    image, manifest, origin = release
    other = manifest_of(image_factory(SIZE, seed=21, name="other.img"), "--piece-size", "1M")
    disk, parts, _labels = gpt_disks((24, 24))
    agent = new_agent(agents, tmp_path)
    assert agent.client.put_fetch(manifest, parts[0], peers=[origin])["changed"]
    assert agent.client.put_fetch(other, parts[1], peers=[origin])["changed"]

    backing = subprocess.run(["losetup", "-nO", "BACK-FILE", disk], check=True, capture_output=True,
                             text=True).stdout.strip()
    start = int(open(f"/sys/class/block/{os.path.basename(parts[1])}/start").read()) * 512
    alias = subprocess.run(["losetup", "--find", "--show", "--offset", str(start + MIB), "--sizelimit",
                            str(SIZE), backing], check=True, capture_output=True, text=True).stdout.strip()
    try:
        third = manifest_of(image_factory(8 * MIB, seed=22, name="third.img"), "--piece-size", "1M")
        with pytest.raises(AgentError) as err:
            agent.client.put_fetch(third, alias, peers=[origin])
        assert f"overlaps {parts[1]}, the target written by the fetch job of other.img" in str(err.value), err.value
    finally:
        subprocess.run(["losetup", "-d", alias], capture_output=True)
