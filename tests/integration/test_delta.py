"""Delta transfer on real swarms (127.0.0.1) and real loop partitions: a fetch takes what
the host already holds — the target's own pieces, zero pieces, pieces of the other slot —
from its disks, and only the rest from the swarm. Counted from the job's byte counters."""
import json
import os
import random
import shutil

from helpers import MIB, needs_loop, run_cli
from helpers.swarm import file_digest, free_port, start_seeder

PIECE = 256 * 1024


def _release(path, base, changed, seed):
    """A copy of ``base`` with the pieces ``changed`` rewritten with other random bytes."""
    shutil.copyfile(base, path)
    rng = random.Random(seed)
    with open(path, "r+b") as f:
        for index in changed:
            f.seek(index * PIECE)
            f.write(rng.randbytes(PIECE))
    return str(path)


def _served(tmp_path, procs, manifest_of, base, changed, number):
    """Release ``number``: ``base`` with the pieces ``changed`` rewritten, made and seeded."""
    path = _release(tmp_path / f"release{number}.img", base, changed, seed=number + 3)
    manifest = manifest_of(path)
    return path, manifest, start_seeder(procs, tmp_path, manifest, path)


def _fetch(tmp_path, manifest, target, seed_port, state, *extra):
    device = ["--device"] if str(target).startswith("/dev/") else []
    proc = run_cli("--json", "fetch", manifest, target, "--peer", f"127.0.0.1:{seed_port}", *device,
                   "--listen", f"127.0.0.1:{free_port()}", "--state-dir", state, "--stall-timeout", "60",
                   *extra, timeout=180)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _first_release(tmp_path, image_factory, loop_factory, manifest_of, procs, size=32 * MIB):
    """Release 1 fetched into slot A (so the ledger knows slot A); returns what the tests need."""
    base = image_factory(size, seed=21, name="release1.img")
    manifest = manifest_of(base)
    seed = start_seeder(procs, tmp_path, manifest, base)
    slot_a, slot_b = loop_factory(size + 4 * MIB), loop_factory(size + 4 * MIB)
    state = tmp_path / "state"
    first = _fetch(tmp_path, manifest, slot_a, seed, state)
    assert first["downloaded_bytes"] == size and first["local_bytes"] == 0, first
    return base, slot_a, slot_b, state


def _changed(count, pieces, seed=3):
    return sorted(random.Random(seed).sample(range(pieces), count))


@needs_loop
def test_release_two_downloads_only_the_changed_pieces_then_the_ledger_keeps_the_target_s_own(
        tmp_path, image_factory, loop_factory, manifest_of, procs):
    size = 32 * MIB
    base, slot_a, slot_b, state = _first_release(tmp_path, image_factory, loop_factory, manifest_of, procs, size)
    pieces = size // PIECE
    changed = _changed(pieces // 10, pieces)
    release2, manifest2, seed2 = _served(tmp_path, procs, manifest_of, base, changed, 2)

    result = _fetch(tmp_path, manifest2, slot_b, seed2, state)
    changed_bytes = len(changed) * PIECE
    assert result["downloaded_bytes"] == changed_bytes, result
    assert result["copied_bytes"] == size - changed_bytes and result["rejected_pieces"] == 0, result
    assert file_digest(slot_b, size) == file_digest(release2, size)

    # Release 3 back into slot A, whose ledger (release 1, verified, untouched) vouches for
    # its own pieces: those unchanged since release 1 are kept without a byte written.
    changed3 = _changed(pieces // 10, pieces, seed=4)
    release3, manifest3, seed3 = _served(tmp_path, procs, manifest_of, release2, changed3, 3)
    result = _fetch(tmp_path, manifest3, slot_a, seed3, state)
    both = set(changed) | set(changed3)
    assert result["kept_bytes"] == (pieces - len(both)) * PIECE, result
    assert result["copied_bytes"] == len(set(changed) - set(changed3)) * PIECE, result
    assert result["downloaded_bytes"] == len(changed3) * PIECE, result
    assert file_digest(slot_a, size) == file_digest(release3, size)


@needs_loop
def test_a_drifted_source_slot_costs_a_fetch_of_the_drifted_pieces_never_a_wrong_byte(
        tmp_path, image_factory, loop_factory, manifest_of, procs):
    size = 16 * MIB
    base, slot_a, slot_b, state = _first_release(tmp_path, image_factory, loop_factory, manifest_of, procs, size)
    pieces = size // PIECE
    changed = _changed(6, pieces)
    release2, manifest2, seed2 = _served(tmp_path, procs, manifest_of, base, changed, 2)
    # Slot A was booted and a file in it changed after its ledger entry was written.
    drifted = [i for i in range(pieces) if i not in changed][5:8]
    with open(slot_a, "r+b") as f:
        for index in drifted:
            f.seek(index * PIECE + 1000)
            f.write(b"drift" * 20)

    result = _fetch(tmp_path, manifest2, slot_b, seed2, state)
    assert result["rejected_pieces"] == len(drifted), result
    assert result["downloaded_bytes"] == (len(changed) + len(drifted)) * PIECE, result
    assert file_digest(slot_b, size) == file_digest(release2, size)


@needs_loop
def test_a_slot_that_matches_its_ledger_by_fingerprint_but_not_by_content_is_repaired_before_it_verifies(
        tmp_path, image_factory, loop_factory, manifest_of, procs):
    size = 16 * MIB
    base, slot_a, _slot_b, state = _first_release(tmp_path, image_factory, loop_factory, manifest_of, procs, size)
    pieces = size // PIECE
    changed = _changed(4, pieces)
    release2, manifest2, seed2 = _served(tmp_path, procs, manifest_of, base, changed, 2)
    # A byte the sampled fingerprint does not read: the ledger still vouches for slot A.
    index = next(i for i in range(3, pieces) if i not in changed)
    with open(slot_a, "r+b") as f:
        f.seek(index * PIECE + PIECE // 2 + 4099)
        f.write(b"\x01")

    result = _fetch(tmp_path, manifest2, slot_a, seed2, state)
    assert result["verified"] is True
    assert result["downloaded_bytes"] == (len(changed) + 1) * PIECE, result
    assert file_digest(slot_a, size) == file_digest(release2, size)


@needs_loop
def test_zero_pieces_are_filled_locally_and_never_requested(tmp_path, loop_factory, manifest_of, procs):
    size = 16 * MIB
    image = tmp_path / "sparse.img"
    rng = random.Random(8)
    data = bytearray(size)
    data[:4 * MIB] = rng.randbytes(4 * MIB)  # 75 % zeros: a mostly empty file system
    data[9 * MIB:9 * MIB + 100] = rng.randbytes(100)  # one piece barely used
    image.write_bytes(bytes(data))
    manifest = manifest_of(image)
    meta = json.loads(open(manifest).read())
    zero_pieces = sum(end - first for first, end in meta["zero_pieces"])
    assert zero_pieces == size // PIECE - 16 - 1, meta["zero_pieces"]
    seed = start_seeder(procs, tmp_path, manifest, image)
    # Partitions full of old bytes: zero-filled pieces must really read as zeros afterwards.
    junk = tmp_path / "junk.bin"
    junk.write_bytes(rng.randbytes(size))
    target = loop_factory(size, fill=junk)
    result = _fetch(tmp_path, manifest, target, seed, tmp_path / "state", "--check-target", "never")
    assert result["zero_bytes"] == zero_pieces * PIECE, result
    assert result["downloaded_bytes"] == size - zero_pieces * PIECE, result
    assert file_digest(target, size) == file_digest(image, size)

    # An image file target: the zero pieces become holes.
    file_target = tmp_path / "target.img"
    file_target.write_bytes(rng.randbytes(size))
    result = _fetch(tmp_path, manifest, file_target, seed, tmp_path / "state2", "--check-target", "never")
    assert result["downloaded_bytes"] == size - zero_pieces * PIECE, result
    assert file_digest(file_target, size) == file_digest(image, size)


@needs_loop
def test_without_a_ledger_the_in_place_check_keeps_the_target_s_matching_pieces(
        tmp_path, image_factory, loop_factory, manifest_of, procs):
    size = 16 * MIB
    base = image_factory(size, seed=31, name="release1.img")
    pieces = size // PIECE
    changed = _changed(8, pieces)
    release2, manifest2, seed2 = _served(tmp_path, procs, manifest_of, base, changed, 2)
    slot = loop_factory(size, fill=base)  # written by something else: no ledger knows it

    result = _fetch(tmp_path, manifest2, slot, seed2, tmp_path / "state", "--check-target", "always")
    assert result["kept_bytes"] == size - len(changed) * PIECE, result
    assert result["downloaded_bytes"] == len(changed) * PIECE, result
    assert file_digest(slot, size) == file_digest(release2, size)

    slot2 = loop_factory(size, fill=base)
    result = _fetch(tmp_path, manifest2, slot2, seed2, tmp_path / "state2", "--no-local")
    assert result["local_bytes"] == 0 and result["downloaded_bytes"] == size, result


def test_a_manifest_whose_zero_pieces_disagree_with_its_torrent_is_refused(tmp_path, image_factory, manifest_of):
    image = image_factory(2 * MIB, seed=2)
    manifest = manifest_of(image)
    meta = json.loads(open(manifest).read())
    assert meta["zero_pieces"] == []
    meta["zero_pieces"] = [[0, 8]]  # a lie that would make a fetch write zeros over real data
    with open(manifest, "w") as f:
        json.dump(meta, f)
    proc = run_cli("fetch", manifest, tmp_path / "t.img", "--peer", "127.0.0.1:1", "--state-dir", tmp_path / "s",
                   "--listen", f"127.0.0.1:{free_port()}")
    assert proc.returncode != 0
    assert "zero_pieces does not match" in proc.stderr
    assert not os.path.exists(tmp_path / "t.img")


@needs_loop
def test_a_slot_mounted_since_its_image_was_verified_is_marked_changed_in_the_ledger(
        tmp_path, image_factory, loop_factory, manifest_of):
    import subprocess
    from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.slots import Ledger, slot_fingerprint
    from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.identity import of_path
    from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.metainfo import Manifest
    fs = tmp_path / "fs.img"
    with open(fs, "wb") as f:
        f.truncate(16 * MIB)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(fs)], check=True)
    slot = loop_factory(16 * MIB, fill=fs)
    manifest = Manifest.load(manifest_of(slot))
    ledger = Ledger(str(tmp_path / "state"))
    ledger.record(slot, of_path(slot), manifest, slot_fingerprint(slot))
    ledger.note_in_use()
    assert ledger.entry(slot).clean
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", slot, str(mnt)], check=True)
    try:
        ledger.note_in_use()
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    entry = ledger.entry(slot)
    assert not entry.clean and "is mounted" in entry.why, entry
    # Mounting wrote the superblock: the fingerprint alone would have caught it too.
    assert slot_fingerprint(slot) != entry.fingerprint


def test_a_job_stopped_or_closed_while_it_takes_local_pieces_lets_its_target_go_and_joins_no_swarm(
        tmp_path, image_factory):
    """The local phase writes into the target from a worker thread: a stop (or the session
    closing) waits for it, releases the target, and a result that comes too late is dropped."""
    from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.records import JobStore
    from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.metainfo import create_manifest
    from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.session import Session, SessionSettings
    size = 256 * MIB
    image = image_factory(size, seed=41, name="big.img")
    manifest, _ = create_manifest(image, str(tmp_path))
    target = tmp_path / "target.img"
    shutil.copyfile(image, target)  # the in-place check has a whole image to read
    settings = SessionSettings(listen=f"127.0.0.1:{free_port()}")
    session = Session(settings, JobStore(str(tmp_path / "state")))
    try:
        snap, _ = session.put_fetch(manifest, str(target), peers=[("127.0.0.1", 1)], check_target="always")
        assert snap.state == "local", snap
        stopped = session.stop(snap.id)
        assert stopped.state == "stopped", stopped
        session.wait_for(lambda jobs: jobs[snap.id].state == "stopped", 30, "the stopped job")
        # The target was let go: the same fetch can be put again, and it finds the image there.
        again, changed = session.put_fetch(manifest, str(target), peers=[("127.0.0.1", 1)], check_target="always")
        assert changed and again.state == "local", again
        done = session.wait_for(lambda jobs: jobs[snap.id].state not in ("local", "downloading", "flushing",
                                                                         "verifying"), 60, "the fetch")
        assert done[snap.id].state == "verified" and done[snap.id].kept_bytes == size, done[snap.id]
        # Closing in the middle of a local phase returns promptly and leaves the job to resume.
        session.forget(snap.id)
        third, _ = session.put_fetch(manifest, str(target), peers=[("127.0.0.1", 1)], check_target="always")
        assert third.state == "local"
    finally:
        session.close(timeout=30)


@needs_loop
def test_an_agents_delta_fetch_counts_the_pieces_that_came_over_the_network_from_its_first_seeding_snapshot(
        tmp_path, image_factory, loop_factory, manifest_of, procs):
    import signal
    from helpers.agent import AgentProc
    size = 16 * MIB
    base = image_factory(size, seed=21, name="release1.img")
    manifest = manifest_of(base)
    seed1 = start_seeder(procs, tmp_path, manifest, base)
    root = tmp_path / "agent"
    root.mkdir()
    agent = AgentProc(root, free_port()).start()
    try:
        slot_a, slot_b = loop_factory(size), loop_factory(size)
        first = agent.client.put_fetch(manifest, slot_a, peers=[f"127.0.0.1:{seed1}"])["job"]["id"]
        agent.wait_job(first, lambda j: j["state"] == "seeding", 60, "release 1 seeding")
        changed = list(range(21))  # a short fetch: over between two of the session's status updates
        release2, manifest2, seed2 = _served(tmp_path, procs, manifest_of, base, changed, 2)
        second = agent.client.put_fetch(manifest2, slot_b, peers=[f"127.0.0.1:{seed2}"])["job"]["id"]
        job = agent.wait_job(second, lambda j: j["state"] == "seeding", 60, "release 2 seeding")
        assert job["downloaded"] >= len(changed) * PIECE and job["copied_bytes"] == size - len(changed) * PIECE, job
        assert file_digest(slot_b, size) == file_digest(release2, size)
    finally:
        agent.stop(signal.SIGKILL)
