"""The agent as a daemon: several jobs in one session, records that survive a kill, the
idempotent API the modules use, allowed peer networks, and a root-only socket.

Real ``p2pfleet agent`` processes, real libtorrent, real loop-device partitions, talked to
through the very client the Ansible modules use."""
import json
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time

import libtorrent as lt
import pytest
import yaml

from ansible_collections.p2pfleet.imaging.plugins.module_utils._agent_client import AgentError
from helpers.agent import AgentProc
from helpers import MIB, P2PFLEET, ROOT, needs_loop, run_cli
from helpers.swarm import file_digest, free_port, start_seeder


@pytest.fixture
def agents():
    started = []
    yield started
    for agent in started:
        agent.stop(signal.SIGKILL) if agent.popen and agent.popen.poll() is None else None


def seeder_endpoint(procs, tmp_path, manifest, image, *extra):
    return f"127.0.0.1:{start_seeder(procs, tmp_path, manifest, image, *extra)}"


def new_agent(agents, tmp_path, name="agent", **config):
    root = tmp_path / name
    root.mkdir()
    agent = AgentProc(root, free_port(), **config)
    agents.append(agent)
    return agent.start()


@needs_loop
def test_one_agent_runs_a_seed_and_two_fetches_and_stopping_one_keeps_the_others(
        tmp_path, image_factory, loop_factory, manifest_of, procs, agents):
    size = 32 * MIB
    image_a, image_b, image_c = (image_factory(size, seed=s, name=f"{n}.img") for s, n in ((1, "a"), (2, "b"), (3, "c")))
    ma, mb, mc = (manifest_of(i, "--piece-size", "1M") for i in (image_a, image_b, image_c))
    # Slow origins, so both fetches are mid-transfer together.
    src_b = seeder_endpoint(procs, tmp_path, mb, image_b, "--upload-limit", str(4 * MIB))
    src_c = seeder_endpoint(procs, tmp_path, mc, image_c, "--upload-limit", str(4 * MIB))
    agent = new_agent(agents, tmp_path, seed_after_fetch=False)
    part_b, part_c = loop_factory(size), loop_factory(size)

    seed = agent.client.put_seed(ma, image_a)
    fetch_b = agent.client.put_fetch(mb, part_b, peers=[src_b])
    fetch_c = agent.client.put_fetch(mc, part_c, peers=[src_c])
    assert seed["changed"] and fetch_b["changed"] and fetch_c["changed"]
    assert len(agent.client.jobs()) == 3
    ib, ic = fetch_b["job"]["id"], fetch_c["job"]["id"]

    agent.wait_job(ib, lambda j: j["percent"] >= 25, 60, "fetch B at 25 %")
    mid_c = agent.client.job(ic)
    assert mid_c["state"] == "downloading" and mid_c["percent"] < 100, mid_c
    resume_b = agent.resume_file(ib)
    before = os.stat(resume_b).st_mtime_ns if os.path.exists(resume_b) else 0
    stopped = agent.client.stop(ib)
    assert stopped["changed"] and stopped["job"]["state"] == "stopped", stopped
    assert os.stat(resume_b).st_mtime_ns > before, "stopping B did not save B's resume data"
    saved_bytes = lt.read_resume_data(open(resume_b, "rb").read()).have_pieces.count(True) * MIB
    assert saved_bytes >= stopped["job"]["bytes_done"] - 4 * MIB, (saved_bytes, stopped["job"])

    # The others carry on: C completes and is verified; A still serves a new terminal.
    done_c = agent.wait_job(ic, lambda j: j["state"] == "verified", 90, "fetch C verified")
    assert done_c["digest"].split(":")[1] and file_digest(part_c, size) == file_digest(image_c, size)
    assert agent.client.job(seed["job"]["id"])["state"] == "seeding"
    # The verified slot is in the agent's slot ledger (delta transfer); B, stopped halfway, is not.
    slots = {s["path"]: s for s in agent.client.info()["slots"]}
    assert slots[part_c]["state"] == "clean" and slots[part_c]["name"] == "c.img", slots
    assert part_b not in slots, slots
    agent_port = agent.client.info()["listen_port"]
    run_cli("fetch", ma, tmp_path / "from-agent.img", "--peer", f"127.0.0.1:{agent_port}",
            "--listen", f"127.0.0.1:{free_port()}", "--state-dir", tmp_path / "cli-state", check=True)
    assert file_digest(tmp_path / "from-agent.img", size) == file_digest(image_a, size)

    # B, put again, resumes from its saved pieces and finishes byte-identical.
    again = agent.client.put_fetch(mb, part_b, peers=[src_b])
    assert again["changed"] is True and again["job"]["resumed_bytes"] >= saved_bytes, again
    agent.wait_job(ib, lambda j: j["state"] == "verified", 90, "fetch B verified after resuming")
    assert file_digest(part_b, size) == file_digest(image_b, size)


@needs_loop
@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_agent_killed_mid_fetch_resumes_the_job_from_its_record(
        how, tmp_path, image_factory, loop_factory, manifest_of, procs, agents):
    size = 48 * MIB
    image = image_factory(size, seed=7)
    manifest = manifest_of(image, "--piece-size", "1M")
    origin = seeder_endpoint(procs, tmp_path, manifest, image, "--upload-limit", str(6 * MIB))
    agent = new_agent(agents, tmp_path, seed_after_fetch=True)
    target = loop_factory(size)
    job_id = agent.client.put_fetch(manifest, target, peers=[origin])["job"]["id"]
    agent.wait_job(job_id, lambda j: j["percent"] >= 50, 60, "fetch at 50 %")
    resume = agent.resume_file(job_id)
    if how == "SIGKILL":
        # Resume data is saved every 2 s while pieces arrive; wait for one past 50 %.
        mark = os.stat(resume).st_mtime_ns
        agent.wait_job(job_id, lambda j: os.stat(resume).st_mtime_ns > mark, 10, "a resume save after 50 %")
    at_kill = agent.client.job(job_id)["bytes_done"]
    downloaded_at_kill = agent.client.job(job_id)["downloaded"]
    code = agent.stop(getattr(signal, how))
    assert code == (-signal.SIGKILL if how == "SIGKILL" else 0), f"agent stopped by {how} exited {code}"
    assert at_kill < size, "the fetch finished before the agent could be stopped"

    agent.start()  # nothing is put again: the record alone brings the job back
    job = agent.wait_job(job_id, lambda j: j["state"] == "seeding", 90, "resumed fetch verified and seeding")
    assert file_digest(target, size) == file_digest(image, size)
    if how == "SIGTERM":
        assert job["resumed_bytes"] >= at_kill - 4 * MIB, (job, at_kill)
    else:
        assert job["resumed_bytes"] >= size * 0.4, job
    # Only what was not saved comes again (pieces in flight at most); the counter is the
    # job's whole life, kept in its record across the restart.
    assert job["downloaded"] - downloaded_at_kill <= size - job["resumed_bytes"] + 8 * MIB, job
    assert job["downloaded"] >= size - job["resumed_bytes"], job
    assert "resumed fetch job" in agent.log()


@needs_loop
def test_putting_a_job_is_idempotent_and_clashing_jobs_are_refused(
        tmp_path, image_factory, loop_factory, manifest_of, procs, agents):
    size = 16 * MIB
    image, other = image_factory(size, seed=4, name="one.img"), image_factory(size, seed=5, name="two.img")
    manifest, other_manifest = manifest_of(image), manifest_of(other)
    origin = seeder_endpoint(procs, tmp_path, manifest, image)
    agent = new_agent(agents, tmp_path)
    target, spare = loop_factory(size), loop_factory(size)

    first = agent.client.put_fetch(manifest, target, peers=[origin])
    second = agent.client.put_fetch(manifest, target, peers=[origin])
    assert first["changed"] is True and second["changed"] is False
    assert second["job"]["id"] == first["job"]["id"] and len(agent.client.jobs()) == 1
    agent.wait_job(first["job"]["id"], lambda j: j["state"] == "seeding", 60, "fetch verified")
    assert agent.client.put_fetch(manifest, target, peers=[origin])["changed"] is False

    spare_digest = file_digest(spare, size)
    refusals = [
        (lambda: agent.client.put_fetch(other_manifest, target), 409, "one host's jobs never share a target"),
        (lambda: agent.client.put_fetch(manifest, spare), 409, "already has a fetch job"),
        (lambda: agent.client.put_seed(other_manifest, target), 409, "never share a target"),
        (lambda: agent.client.put_fetch(other_manifest, other_manifest), 400, "which this job reads"),
        (lambda: agent.client.put_fetch(other_manifest, spare, colour="red"), 400, "colour: unknown key"),
        (lambda: agent.client.put_fetch(str(tmp_path / "none.json"), spare), 400, "no such manifest"),
        (lambda: agent.client.put_fetch(other_manifest, "relative.img"), 400, "must be an absolute path"),
    ]
    for call, status, words in refusals:
        with pytest.raises(AgentError) as err:
            call()
        assert err.value.status == status and words in str(err.value), (status, str(err.value))
    assert file_digest(spare, size) == spare_digest, "a refused job wrote to the spare partition"
    assert len(agent.client.jobs()) == 1

    removed = agent.client.remove(first["job"]["id"])
    assert removed["changed"] is True and agent.client.jobs() == []
    assert not os.path.exists(agent.resume_file(first["job"]["id"]))
    assert agent.client.remove(first["job"]["id"])["changed"] is False


@needs_loop
def test_a_dry_run_says_what_a_call_would_change_and_changes_nothing(
        tmp_path, image_factory, loop_factory, manifest_of, procs, agents):
    # The swarm_job module's check mode: the agent decides, the module passes it on.
    size = 16 * MIB
    image, other = image_factory(size, seed=6, name="one.img"), image_factory(size, seed=7, name="two.img")
    manifest, other_manifest = manifest_of(image), manifest_of(other)
    origin = seeder_endpoint(procs, tmp_path, manifest, image, "--upload-limit", str(2 * MIB))
    agent = new_agent(agents, tmp_path)
    target, spare = loop_factory(size), loop_factory(size)
    target_digest = file_digest(target, size)

    would = agent.client.put_fetch(manifest, target, peers=[origin], dry_run=True)
    assert would == {"changed": True, "job": None}
    assert agent.client.jobs() == [] and file_digest(target, size) == target_digest
    assert agent.client.put_seed(other_manifest, other, dry_run=True) == {"changed": True, "job": None}
    assert agent.client.jobs() == []

    job_id = agent.client.put_fetch(manifest, target, peers=[origin])["job"]["id"]
    again = agent.client.put_fetch(manifest, target, peers=[origin], dry_run=True)
    assert again["changed"] is False and again["job"]["id"] == job_id
    with pytest.raises(AgentError) as err:  # refused in a dry run as in a real one
        agent.client.put_fetch(other_manifest, target, dry_run=True)
    assert err.value.status == 409 and "never share a target" in str(err.value)

    assert agent.client.stop(job_id, dry_run=True)["changed"] is True
    assert agent.client.remove(job_id, dry_run=True) == {"changed": True}
    assert agent.client.job(job_id)["state"] not in ("stopped", "failed")
    stopped = agent.client.stop(job_id)
    assert stopped["changed"] is True and stopped["job"]["state"] == "stopped"
    assert agent.client.stop(job_id, dry_run=True)["changed"] is False
    restarted = agent.client.put_fetch(manifest, target, peers=[origin], dry_run=True)
    assert restarted["changed"] is True and restarted["job"]["state"] == "stopped"
    assert agent.client.job(job_id)["state"] == "stopped"


def test_a_peer_outside_the_allowed_networks_gets_no_byte(tmp_path, image_factory, manifest_of, procs, agents):
    size = 8 * MIB
    image = image_factory(size, seed=9)
    manifest = manifest_of(image)
    agent = new_agent(agents, tmp_path, allowed_networks=["127.0.0.1/32"])
    agent.client.put_seed(manifest, image)
    agent_ep = ("127.0.0.1", agent.client.info()["listen_port"])

    # An outsider on 127.0.0.2 (outside the list) dials the agent from that address.
    port = free_port()
    outsider = lt.session({"listen_interfaces": f"127.0.0.2:{port}", "outgoing_interfaces": "127.0.0.2",
                           "enable_dht": False, "enable_lsd": False, "enable_upnp": False,
                           "enable_natpmp": False, "enable_outgoing_utp": False,
                           "alert_mask": lt.alert_category.error})
    atp = lt.add_torrent_params()
    atp.ti = lt.torrent_info(manifest.replace(".manifest.json", ".torrent"))
    atp.save_path = str(tmp_path / "outsider")
    handle = outsider.add_torrent(atp)
    # An insider fetches from the same agent meanwhile: the agent is serving, just not to it.
    run_cli("fetch", manifest, tmp_path / "insider.img", "--peer", f"{agent_ep[0]}:{agent_ep[1]}",
            "--listen", f"127.0.0.1:{free_port()}", "--state-dir", tmp_path / "insider", check=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        handle.connect_peer(agent_ep)
        outsider.wait_for_alert(200)
        if agent.client.info()["blocked_peers"] > 0:
            break
    assert agent.client.info()["blocked_peers"] > 0, "the agent never saw the outsider"
    assert handle.status().total_payload_download == 0, "a peer outside allowed_networks got image bytes"
    assert "refused peer 127.0.0.2: outside the allowed networks" in agent.log()
    assert file_digest(tmp_path / "insider.img", size) == file_digest(image, size)


def test_the_socket_is_root_only(tmp_path, agents):
    # A socket directory anybody may traverse, as /run/p2pfleet is on a host.
    public = tempfile.mkdtemp(prefix="p2pfleet-test-")
    os.chmod(public, 0o755)
    # The client is standard library only: the system Python runs it, as on any host.
    shutil.copy(os.path.join(ROOT, "plugins", "module_utils", "_agent_client.py"), public)
    try:
        agent = new_agent(agents, tmp_path, socket=os.path.join(public, "run", "agent.sock"))
        assert stat.S_IMODE(os.stat(agent.socket).st_mode) == 0o600
        code = ("import sys; sys.path.insert(0, sys.argv[1]); from _agent_client import AgentClient, AgentError\n"
                "try:\n    AgentClient(sys.argv[2]).jobs()\nexcept AgentError as e:\n    print(e); sys.exit(3)\n")

        def as_nobody():
            return subprocess.run(["/usr/bin/python3", "-c", code, public, agent.socket], capture_output=True,
                                  text=True, timeout=30, cwd=public,
                                  preexec_fn=lambda: (os.setgid(65534), os.setuid(65534)))

        refused = as_nobody()
        assert refused.returncode == 3, refused.stderr
        assert "permission denied; only root may talk to the agent" in refused.stdout
        # Even with the file mode opened up, the agent checks who is on the other end.
        os.chmod(agent.socket, 0o666)
        refused = as_nobody()
        assert refused.returncode == 3, refused.stderr
        assert "only root may talk to the p2pfleet agent" in refused.stdout, refused.stdout
        assert agent.client.jobs() == []
    finally:
        shutil.rmtree(public, ignore_errors=True)


def test_a_second_agent_on_the_same_socket_is_refused_and_a_bad_config_names_its_key(tmp_path, agents):
    agent = new_agent(agents, tmp_path)
    twin = run_cli("agent", "--config", agent.config_path, timeout=30)
    assert twin.returncode == 1 and "another agent is already running on this socket" in twin.stderr, twin.stderr
    bad = tmp_path / "bad.yml"
    bad.write_text("listen: 127.0.0.1:0\nallowed_networks: [10.0.0.0/8, not-a-net]\n")
    proc = run_cli("agent", "--config", bad, timeout=30)
    assert proc.returncode == 1 and "allowed_networks: 'not-a-net' is not an IP network" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_requests_get_one_line_and_the_agent_keeps_serving(tmp_path, image_factory, manifest_of, agents):
    image = image_factory(4 * MIB, seed=31)
    manifest = manifest_of(image)
    agent = new_agent(agents, tmp_path)
    cases = [
        (lambda: agent.client.put_fetch(manifest, str(tmp_path / "t.img"), peers=["seeder.lab:6881"]), 400,
         "must be IP:PORT"),
        (lambda: agent.client.put_fetch(manifest, str(tmp_path / "t\0.img"), peers=["127.0.0.1:1"]), 400,
         "must be an absolute path"),
        (lambda: agent.client.put_seed(manifest + "\0", image), 400, "must be an absolute path"),
        (lambda: agent.client.put_fetch(manifest, str(tmp_path / "t.img"), peers=["127.0.0.1:1"],
                                        check_target="sometimes"), 400, "check_target: must be one of"),
        (lambda: agent.client.put_seed(manifest, image, local_sources=False), 400, "only for action fetch"),
        # The config file's rule for trackers holds for a job's trackers too.
        (lambda: agent.client.put_fetch(manifest, str(tmp_path / "t.img"), trackers=["file:///etc/shadow"]), 400,
         "trackers: must be a list of http(s):// announce URLs, got ['file:///etc/shadow']"),
        (lambda: agent.client.put_seed(manifest, image, trackers=["udp://10.0.0.1:6969"]), 400,
         "trackers: must be a list of http(s):// announce URLs"),
        (lambda: agent.client.put_seed(manifest, image, trackers="http://10.0.0.1:6969/announce"), 400,
         "trackers: must be a list of http(s):// announce URLs"),
        (lambda: agent.client.job("not-a-hash"), 400, "40 hex digits"),
        (lambda: agent.client.stop("0" * 40), 404, "no job"),
    ]
    for call, status, words in cases:
        with pytest.raises(AgentError) as err:
            call()
        assert err.value.status == status and words in str(err.value), (status, str(err.value))
    assert not (tmp_path / "t.img").exists() and agent.client.jobs() == []
    # The loop survived: a good job still works.
    assert agent.client.put_seed(manifest, image)["job"]["state"] in ("checking", "seeding")
    assert "Traceback" not in agent.log()


def boot_guarded_agent(agents, tmp_path, gpt_disks, saved_entry="A", **config):
    """An agent on a terminal whose slots are the partitions of a GPT loop disk, by label, with
    its boot environment (a GRUB block and default file) in tmp_path, the default ``saved_entry``."""
    disk, parts, labels = gpt_disks()
    grub_dir = tmp_path / "boot" / "grub"
    grub_dir.mkdir(parents=True)
    grubenv = grub_dir / "grubenv"
    subprocess.run(["grub-editenv", str(grubenv), "create"], check=True)
    subprocess.run(["grub-editenv", str(grubenv), "set", f"saved_entry={saved_entry}"], check=True)
    (grub_dir / "p2pfleet-default.cfg").write_text(f'set p2pfleet_default="{saved_entry}"\n')
    slots = [{"name": "A", "partlabel": labels[0], "boot_entry": "A"},
             {"name": "B", "partlabel": labels[1], "boot_entry": "B"}]
    agent = new_agent(agents, tmp_path, slots=slots, boot={"backend": "grub", "grubenv": str(grubenv)}, **config)
    return agent, disk, parts, grub_dir


def reload_with(agent, **changes):
    """Rewrite the agent's config with ``changes`` and reload it (SIGHUP)."""
    agent.config_path.write_text(yaml.safe_dump(dict(agent.config, **changes)))
    agent.popen.send_signal(signal.SIGHUP)
    wanted = dict(agent.config, **changes)["slots"]
    deadline = time.monotonic() + 10
    while agent.client.info()["slot_definitions"] != wanted:
        assert time.monotonic() < deadline, f"the agent did not reload its slots:\n{agent.log()[-2000:]}"
        time.sleep(0.05)


def read_grubenv(grub_dir):
    out = subprocess.run(["grub-editenv", str(grub_dir / "grubenv"), "list"], capture_output=True, text=True,
                         check=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def boot_files(grub_dir):
    return {p.name: p.read_bytes() for p in sorted(grub_dir.iterdir())}


@needs_loop
def test_the_agent_refuses_to_fetch_into_the_slot_its_terminal_falls_back_to(
        tmp_path, image_factory, manifest_of, procs, agents, gpt_disks):
    size = 8 * MIB
    image = image_factory(size, seed=41)
    manifest = manifest_of(image, "--piece-size", "1M")
    origin = seeder_endpoint(procs, tmp_path, manifest, image)
    agent, disk, parts, grub_dir = boot_guarded_agent(agents, tmp_path, gpt_disks, seed_after_fetch=False)
    info = agent.client.info()
    assert [s["name"] for s in info["slot_definitions"]] == ["A", "B"] and info["boot"]["backend"] == "grub", info
    link = tmp_path / "system_a"
    link.symlink_to(parts[0])
    before_env, before_a = boot_files(grub_dir), file_digest(parts[0], 16 * MIB)

    # Whoever asks, and by whatever name: the slot GRUB falls back to is not written.
    for target, words in ((parts[0], f"{parts[0]}: is slot A, the slot this terminal falls back to (GRUB saved_entry); "
                                     "refusing to write it"),
                          (str(link), f"{link}: is slot A, the slot this terminal falls back to"),
                          (disk, f"{disk}: holds slot A, the slot this terminal falls back to")):
        with pytest.raises(AgentError) as err:
            agent.client.put_fetch(manifest, target, peers=[origin], require_device=True)
        assert err.value.status == 400 and words in str(err.value), str(err.value)
        assert "\n" not in str(err.value)
    assert agent.client.jobs() == []
    assert file_digest(parts[0], 16 * MIB) == before_a and boot_files(grub_dir) == before_env

    root = subprocess.run(["findmnt", "-n", "-o", "SOURCE", "/"], capture_output=True, text=True).stdout.strip()
    if root.startswith("/dev/") and os.path.exists(root):
        # The slot running now (this machine's root as slot A) is refused by the guard itself;
        # slots given by a reload (SIGHUP) are guarded at once.
        running = [{"name": "A", "device": root}, agent.config["slots"][1]]
        reload_with(agent, slots=running)
        with pytest.raises(AgentError, match=f"{root}: is slot A, the slot running now"):
            agent.client.put_fetch(manifest, root, peers=[origin], require_device=True)
        reload_with(agent)

    # The other slot takes the release as ever.
    job = agent.client.put_fetch(manifest, parts[1], peers=[origin], require_device=True)["job"]
    agent.wait_job(job["id"], lambda j: j["state"] == "verified", 60, "fetch into slot B verified")
    assert file_digest(parts[1], size) == file_digest(image, size)
    assert file_digest(parts[0], 16 * MIB) == before_a and boot_files(grub_dir) == before_env


@needs_loop
def test_a_recorded_fetch_is_not_resumed_into_a_slot_that_became_the_fallback(
        tmp_path, image_factory, manifest_of, procs, agents, gpt_disks):
    size = 16 * MIB
    image = image_factory(size, seed=42)
    manifest = manifest_of(image, "--piece-size", "1M")
    origin = seeder_endpoint(procs, tmp_path, manifest, image, "--upload-limit", str(2 * MIB))
    agent, _disk, parts, grub_dir = boot_guarded_agent(agents, tmp_path, gpt_disks, seed_after_fetch=True)
    job_id = agent.client.put_fetch(manifest, parts[1], peers=[origin], require_device=True)["job"]["id"]
    agent.wait_job(job_id, lambda j: j["percent"] >= 25, 60, "fetch into B at 25 %")
    agent.stop(signal.SIGKILL)

    # Meanwhile B became the default (a confirm outside the playbook's flow, forced from a
    # rescue system): the recorded job must not take it up again.
    subprocess.run(["grub-editenv", str(grub_dir / "grubenv"), "set", "saved_entry=B"], check=True)
    (grub_dir / "p2pfleet-default.cfg").write_text('set p2pfleet_default="B"\n')
    before_env, before_b = boot_files(grub_dir), file_digest(parts[1], 24 * MIB)
    agent.start()
    job = agent.client.job(job_id)
    assert job["state"] == "failed", job
    assert job["error"].startswith(f"cannot resume: {parts[1]}: is slot B, the slot this terminal falls back to "
                                   "(GRUB saved_entry)"), job
    time.sleep(2)  # nothing writes B after the refusal either
    assert file_digest(parts[1], 24 * MIB) == before_b and boot_files(grub_dir) == before_env


@needs_loop
def test_the_agent_plans_verifies_and_records_a_terminals_reimage_from_its_own_facts(
        tmp_path, image_factory, manifest_of, procs, gpt_disks, agents):  # agents stop before the disks go
    root = subprocess.run(["findmnt", "-n", "-o", "SOURCE", "/"], capture_output=True, text=True).stdout.strip()
    if not (root.startswith("/dev/") and os.path.exists(root)):
        pytest.skip("the running root is not a block device here: no slot can be the running one")
    size = 8 * MIB
    image = image_factory(size, seed=43)
    manifest = manifest_of(image, "--piece-size", "1M")
    origin = seeder_endpoint(procs, tmp_path, manifest, image)
    agent, _disk, parts, grub_dir = boot_guarded_agent(agents, tmp_path, gpt_disks)
    reload_with(agent, slots=[{"name": "A", "device": root}, agent.config["slots"][1]])  # A runs, A is the default
    client = agent.client

    answer = client.reimage_step("distribute", manifest=manifest, peers=[origin])
    assert answer["changed"] and answer["plan"]["action"] == "fetch" and answer["plan"]["slot"] == "B", answer
    assert answer["record"]["phase"] == "fetching" and answer["record"]["device"] == parts[1]
    again = client.reimage_step("distribute", manifest=manifest, peers=[origin])
    assert not again["changed"] and again["record"] == answer["record"], again  # a re-run: same slot, same job
    job_id = answer["job"]["id"]
    agent.wait_job(job_id, lambda j: j["state"] == "seeding", 60, "fetch into B seeding")

    verdict = client.reimage_step("verify")
    assert verdict["verified"] and verdict["record"]["phase"] == "verified", verdict
    assert verdict["record"]["digest"] == client.job(job_id)["digest"]
    assert agent.log().count("-> verifying") == 1, agent.log()  # the slot was read once for this release

    # The switch, one step at a time, in the boot environment and the record together: tried
    # arms B for the next boot only (after the job seeding B let go of it) and says a reboot
    # is due; B never booted here, so confirming it is refused; the rollback drops the try.
    tried = client.reimage_step("tried")
    assert tried["changed"] and tried["reboot"] and tried["record"]["phase"] == "tried", tried
    assert read_grubenv(grub_dir)["next_entry"] == "B" and read_grubenv(grub_dir)["saved_entry"] == "A"
    assert client.job(job_id) is None, "the job seeding slot B still holds it"
    assert tried["situation"]["pending"] == "B"
    with pytest.raises(AgentError, match="came back on slot A, not B: the new image did not boot"):
        client.reimage_step("confirmed")
    assert client.reimage()["record"]["phase"] == "tried" and read_grubenv(grub_dir)["saved_entry"] == "A"
    back = client.reimage_step("rolled_back", reason="came back on slot A")
    assert not back["reboot"] and not back["kept"], back   # A runs: no reboot needed to go back
    assert "next_entry" not in read_grubenv(grub_dir)
    assert client.reimage()["record"] == {**client.reimage()["record"], "phase": "rolled_back",
                                          "reason": "came back on slot A"}
    with pytest.raises(AgentError, match="slot B is rolled_back, not verified: it is never booted"):
        client.reimage_step("tried")

    # Killed during a switch: B runs but was only tried (simulated: GRUB's default is B while A
    # runs, so the running slot is no fallback). Nothing is fetched until that is settled.
    subprocess.run(["grub-editenv", str(grub_dir / "grubenv"), "set", "saved_entry=B"], check=True)
    (grub_dir / "p2pfleet-default.cfg").write_text('set p2pfleet_default="B"\n')
    other = manifest_of(image_factory(size, seed=44, name="other.img"), "--piece-size", "1M")
    pending = client.reimage_step("distribute", manifest=other, peers=[origin])
    assert pending["plan"]["action"] == "finish_switch" and not pending["changed"], pending
    assert "falls back to slot B (GRUB saved_entry, GRUB p2pfleet-default.cfg)" in pending["plan"]["reason"]
    assert client.job(json.loads(open(other).read())["info_hash"]) is None


@needs_loop
def test_a_slot_changed_after_its_verdict_is_verified_again_by_an_agent_job(
        tmp_path, image_factory, manifest_of, procs, gpt_disks, agents):
    root = subprocess.run(["findmnt", "-n", "-o", "SOURCE", "/"], capture_output=True, text=True).stdout.strip()
    if not (root.startswith("/dev/") and os.path.exists(root)):
        pytest.skip("the running root is not a block device here: no slot can be the running one")
    size = 8 * MIB
    image = image_factory(size, seed=45)
    manifest = manifest_of(image, "--piece-size", "1M")
    origin = seeder_endpoint(procs, tmp_path, manifest, image)
    agent, _disk, parts, _grub_dir = boot_guarded_agent(agents, tmp_path, gpt_disks, seed_after_fetch=False)
    reload_with(agent, slots=[{"name": "A", "device": root}, agent.config["slots"][1]])
    job_id = agent.client.reimage_step("distribute", manifest=manifest, peers=[origin])["job"]["id"]
    agent.wait_job(job_id, lambda j: j["state"] == "verified", 60, "fetch into B verified")

    fd = os.open(parts[1], os.O_WRONLY)
    try:
        os.pwrite(fd, b"\xff" * 4096, 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    verdict = agent.client.reimage_step("verify")
    assert verdict["pending"] and verdict["reason"].startswith("verifying again: the slot was written since"), verdict
    deadline = time.monotonic() + 60
    while verdict["pending"]:
        assert time.monotonic() < deadline, verdict
        time.sleep(0.5)
        verdict = agent.client.reimage_step("verify")
    assert verdict["verified"] and file_digest(parts[1], size) == file_digest(image, size), verdict
    job = agent.client.job(job_id)
    assert job["downloaded"] <= 2 * MIB and job["kept_bytes"] >= size - 2 * MIB, job  # one piece came again


def test_a_reload_while_the_agent_starts_does_not_end_it(tmp_path, agents):
    # The swarm_client role restarts the agent and may reload it a moment later; SIGHUP's
    # default action would end an agent that has not set its handler yet.
    root = tmp_path / "agent"
    root.mkdir()
    agent = AgentProc(root, free_port())
    agents.append(agent)
    agent._log = open(agent.log_path, "a")
    agent.popen = subprocess.Popen(P2PFLEET + ["agent", "--config", str(agent.config_path)],
                                   stdout=agent._log, stderr=subprocess.STDOUT)
    time.sleep(0.3)  # Python runs, the session is not up yet
    agent.popen.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while True:
        assert agent.popen.poll() is None, f"the agent died of an early SIGHUP:\n{agent.log()[-2000:]}"
        try:
            if agent.client.info()["pid"] == agent.popen.pid:
                break
        except AgentError:
            pass
        assert time.monotonic() < deadline, agent.log()[-2000:]
        time.sleep(0.1)
