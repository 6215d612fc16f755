"""Real swarms on 127.0.0.1: libtorrent seeders and fetchers as p2pfleet processes,
writing into real loop-device partitions."""
import json
import signal

import pytest

from helpers import MIB, needs_loop, run_cli
from helpers.swarm import Proc, file_digest, free_port, start_seeder, wait_file_changes


@needs_loop
def test_seeder_and_three_fetchers_two_into_partitions(tmp_path, image_factory, loop_factory, manifest_of, procs):
    size = 48 * MIB
    image = image_factory(size)
    manifest = manifest_of(image, "--piece-size", "1M")
    # The origin is slowed so the fetchers must trade pieces among themselves.
    seed_port = start_seeder(procs, tmp_path, manifest, image, "--upload-limit", str(12 * MIB))
    targets = [loop_factory(64 * MIB), loop_factory(size), str(tmp_path / "copy.img")]
    ports = [free_port() for _ in targets]
    fetchers = []
    for i, (target, port) in enumerate(zip(targets, ports)):
        others = [f"127.0.0.1:{p}" for p in ports if p != port]
        args = ["fetch", manifest, target, "--listen", f"127.0.0.1:{port}", "--state-dir", tmp_path / f"state{i}",
                "--peer", f"127.0.0.1:{seed_port}", "--progress-interval", "0.5", "--stall-timeout", "60"]
        for other in others:
            args += ["--peer", other]
        proc = Proc(*args, log_path=tmp_path / f"fetch{i}")
        procs.append(proc)
        fetchers.append(proc)
    results = []
    for proc, target in zip(fetchers, targets):
        assert proc.wait_exit(120, f"fetch into {target}") == 0, proc.stderr()
        results.append(proc.result())
    want = file_digest(image, size)
    for target, result in zip(targets, results):
        assert result["verified"] is True
        assert file_digest(target, size) == want, f"{target} differs from the image"
    assert sum(r["uploaded_bytes"] for r in results) > 0, "fetchers never traded pieces with each other"


@needs_loop
def test_seed_from_partition_into_partition(tmp_path, image_factory, loop_factory, manifest_of, procs):
    size = 32 * MIB
    image = image_factory(size, seed=7)
    source = loop_factory(size, fill=image)
    manifest = manifest_of(source)
    seed_port = start_seeder(procs, tmp_path, manifest, source)
    target = loop_factory(40 * MIB)
    proc = run_cli("--json", "fetch", manifest, target, "--peer", f"127.0.0.1:{seed_port}",
                   "--listen", f"127.0.0.1:{free_port()}", "--state-dir", tmp_path / "state", check=True)
    assert '"verified": true' in proc.stdout
    assert file_digest(target, size) == file_digest(image, size)
    # The bytes past the image in a larger partition are left alone (never truncated).
    with open(target, "rb") as f:
        f.seek(size)
        assert f.read(MIB) == b"\0" * MIB


@needs_loop
@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_interrupted_fetch_resumes_without_fetching_done_pieces_again(how, tmp_path, image_factory, loop_factory,
                                                                      manifest_of, procs):
    size = 64 * MIB
    piece = MIB
    image = image_factory(size, seed=3)
    manifest = manifest_of(image, "--piece-size", "1M")
    seed_port = start_seeder(procs, tmp_path, manifest, image)
    target = loop_factory(size)
    state = tmp_path / "state"
    common = [manifest, target, "--peer", f"127.0.0.1:{seed_port}", "--state-dir", state]
    first = Proc("fetch", *common, "--listen", f"127.0.0.1:{free_port()}", "--download-limit", str(8 * MIB),
                 "--progress-interval", "0.2", log_path=tmp_path / "first")
    procs.append(first)

    def half_done(p):
        last = p.last_progress()
        return last is not None and last["percent"] >= 50

    first.wait_for(half_done, 60, "first fetch reaching 50 %")
    # What the admin watched on the way: downloading from a peer, with an ETA. Not asserted
    # on the one line that crosses 50 %: on a busy CI host libtorrent's status came in bursts
    # (49.5 % for 3 s, then 98.3 %) and the line after a burst has no rate measured yet.
    seen = [e for e in first.events() if e.get("event") == "progress"]
    assert any(e["state"] == "downloading" and e["peers"] >= 1 and e["eta"] is not None for e in seen), seen[-5:]
    resume_file = next(state.rglob("*.resume"), None)
    assert resume_file is not None, "no resume data written while fetching"
    if how == "SIGKILL":
        wait_file_changes(str(resume_file), resume_file.stat().st_mtime_ns, 10, "resume data after 50 %")
    first.popen.send_signal(getattr(signal, how))
    code = first.popen.wait(20)
    assert code == (-signal.SIGKILL if how == "SIGKILL" else 130), f"fetch stopped by {how} exited {code}"
    stopped_at = first.last_progress()["bytes_done"]
    assert stopped_at < size, "the first fetch finished before it could be stopped"
    # The limit holds for a peer on the local network too (libtorrent exempts LANs by default).
    rates = sorted(e["download_rate"] for e in first.events() if e.get("event") == "progress")
    median = rates[len(rates) // 2]
    assert median <= 8 * MIB * 1.5, f"download limit of 8 MiB/s not applied: median {median} B/s"

    second = run_cli("--json", "fetch", *common, "--listen", f"127.0.0.1:{free_port()}", check=True)
    result = json.loads(second.stdout.strip().splitlines()[-1])
    assert result["verified"] is True
    assert file_digest(target, size) == file_digest(image, size)
    if how == "SIGTERM":
        # A graceful stop saves resume data for every whole piece it had; only the few
        # pieces still in flight (counted in bytes_done by their finished blocks) come again.
        assert result["resumed_bytes"] >= stopped_at - 4 * piece, (result, stopped_at)
    else:
        assert result["resumed_bytes"] >= size * 0.4, f"resumed only {result['resumed_bytes']} of {size} bytes"
    # Pieces in flight when stopped may come again; nothing already saved may.
    assert result["downloaded_bytes"] <= size - result["resumed_bytes"] + 8 * piece, result


@needs_loop
def test_split_image_lands_at_offsets_of_one_partition(tmp_path, image_factory, loop_factory, manifest_of, procs):
    size = 40 * MIB
    image = image_factory(size, seed=11)
    manifest = manifest_of(image, "--piece-size", "1M", "--split-size", "16M")
    seed_port = start_seeder(procs, tmp_path, manifest, image)
    target = loop_factory(size)
    run_cli("fetch", manifest, target, "--peer", f"127.0.0.1:{seed_port}", "--listen", f"127.0.0.1:{free_port()}",
            "--state-dir", tmp_path / "state", check=True)
    assert file_digest(target, size) == file_digest(image, size)


def test_rerun_of_a_finished_fetch_downloads_nothing(tmp_path, image_factory, manifest_of, procs):
    size = 16 * MIB
    image = image_factory(size, seed=5)
    manifest = manifest_of(image)
    seed_port = start_seeder(procs, tmp_path, manifest, image)
    target = tmp_path / "target.img"
    args = ["--json", "fetch", manifest, target, "--peer", f"127.0.0.1:{seed_port}", "--state-dir", tmp_path / "s"]
    run_cli(*args, "--listen", f"127.0.0.1:{free_port()}", check=True)
    again = run_cli(*args, "--listen", f"127.0.0.1:{free_port()}", check=True)
    result = json.loads(again.stdout.strip().splitlines()[-1])
    assert result["resumed_bytes"] == size and result["downloaded_bytes"] == 0


def test_fetch_repairs_a_target_corrupted_behind_its_back(tmp_path, image_factory, manifest_of, procs):
    size = 16 * MIB
    image = image_factory(size, seed=9)
    manifest = manifest_of(image, "--piece-size", "1M")
    seed_port = start_seeder(procs, tmp_path, manifest, image)
    target = tmp_path / "target.img"
    args = ["--json", "fetch", manifest, target, "--peer", f"127.0.0.1:{seed_port}", "--state-dir", tmp_path / "s"]
    run_cli(*args, "--listen", f"127.0.0.1:{free_port()}", check=True)
    with open(target, "r+b") as f:
        f.seek(5 * MIB + 123)
        f.write(b"\xff" * 10)
    again = run_cli(*args, "--listen", f"127.0.0.1:{free_port()}", check=True)
    assert "1 pieces are wrong" in again.stderr
    result = json.loads(again.stdout.strip().splitlines()[-1])
    assert result["downloaded_bytes"] == MIB, f"only the one bad piece should come again: {result}"
    assert file_digest(target, size) == file_digest(image, size)


def test_unreachable_tracker_gives_up_after_stall_timeout_naming_it(tmp_path, image_factory, manifest_of):
    image = image_factory(4 * MIB, seed=13)
    manifest = manifest_of(image)
    dead = f"http://127.0.0.1:{free_port()}/announce"
    proc = run_cli("fetch", manifest, tmp_path / "target.img", "--tracker", dead, "--stall-timeout", "3",
                   "--listen", f"127.0.0.1:{free_port()}", "--state-dir", tmp_path / "s", timeout=60)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("p2pfleet: error: no progress for 3 s with 0 peers"), last
    assert "tracker" in last, f"the error should say the tracker failed: {last}"


def test_fetch_without_any_peer_source_is_refused(tmp_path, image_factory, manifest_of):
    manifest = manifest_of(image_factory(4 * MIB))
    proc = run_cli("fetch", manifest, tmp_path / "target.img", "--state-dir", tmp_path / "s")
    assert proc.returncode == 1
    assert "needs --tracker URL or at least one --peer" in proc.stderr
    assert not (tmp_path / "target.img").exists(), "nothing may be created when the command is refused"


def test_port_in_use_fails_and_leaves_no_target_behind(tmp_path, image_factory, manifest_of):
    import socket
    manifest = manifest_of(image_factory(4 * MIB))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = run_cli("fetch", manifest, tmp_path / "target.img", "--peer", "127.0.0.1:1",
                       "--listen", f"127.0.0.1:{port}", "--state-dir", tmp_path / "s")
    assert proc.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr
    assert not (tmp_path / "target.img").exists()


def test_keep_seeding_serves_the_next_terminal_after_the_origin_left(tmp_path, image_factory, manifest_of, procs):
    size = 16 * MIB
    image = image_factory(size, seed=17)
    manifest = manifest_of(image)
    seed_port = start_seeder(procs, tmp_path, manifest, image)
    origin = procs[-1]
    relay_port = free_port()
    relay = Proc("fetch", manifest, tmp_path / "relay.img", "--peer", f"127.0.0.1:{seed_port}",
                 "--listen", f"127.0.0.1:{relay_port}", "--state-dir", tmp_path / "relay", "--keep-seeding",
                 log_path=tmp_path / "relay")
    procs.append(relay)
    relay.wait_for(lambda p: any("complete and verified" in e.get("text", "") for e in p.events()), 60,
                   "relay verified and seeding")
    origin.stop()
    late = run_cli("--json", "fetch", manifest, tmp_path / "late.img", "--peer", f"127.0.0.1:{relay_port}",
                   "--listen", f"127.0.0.1:{free_port()}", "--state-dir", tmp_path / "late", check=True)
    assert json.loads(late.stdout.strip().splitlines()[-1])["verified"] is True
    assert file_digest(tmp_path / "late.img", size) == file_digest(image, size)
    relay.popen.send_signal(signal.SIGTERM)
    assert relay.wait_exit(20, "relay stopping") == 0, "a verified fetch stopped while seeding is a success"


def test_unusable_resume_data_is_reported_not_dropped_silently(tmp_path, image_factory, manifest_of, procs):
    size = 8 * MIB
    image = image_factory(size, seed=21)
    manifest = manifest_of(image)
    seed_port = start_seeder(procs, tmp_path, manifest, image)
    state = tmp_path / "s"
    args = ["--json", "fetch", manifest, tmp_path / "target.img", "--peer", f"127.0.0.1:{seed_port}",
            "--state-dir", state]
    run_cli(*args, "--listen", f"127.0.0.1:{free_port()}", check=True)
    resume = next(state.rglob("*.resume"))
    resume.write_bytes(b"this is not resume data")
    again = run_cli(*args, "--listen", f"127.0.0.1:{free_port()}", check=True)
    assert f"resume data in {resume} is unusable" in again.stderr and "starting from zero" in again.stderr
    result = json.loads(again.stdout.strip().splitlines()[-1])
    assert result["resumed_bytes"] == 0 and result["verified"] is True


def test_an_unusable_state_dir_is_one_error_line_and_no_target_file(tmp_path, image_factory, manifest_of):
    manifest = manifest_of(image_factory(4 * MIB, seed=22))
    for state in ("/proc/nope", str(tmp_path / "a-file")):
        (tmp_path / "a-file").write_text("not a directory")
        proc = run_cli("fetch", manifest, tmp_path / "target.img", "--peer", "127.0.0.1:1", "--state-dir", state,
                       "--listen", f"127.0.0.1:{free_port()}", timeout=60)
        assert proc.returncode == 1, proc.stderr
        assert proc.stderr.startswith(f"p2pfleet: error: {state}") and "state directory is not usable" in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
        assert not (tmp_path / "target.img").exists(), "a target file was left behind"
