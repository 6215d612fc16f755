"""The roles on the session lab, and the modules driving the agents they install.

``tracker`` on the server and ``swarm_client`` on the server and every terminal, converged
for real over SSH: a second run changes nothing, the services run, their configs come from
the inventory. Then the modules move an image from the server into every terminal's
inactive slot through those agents; an agent killed mid-transfer resumes, and the same play
run again ends with nothing changed."""
import json
import os
import time
import urllib.request

import pytest
import yaml

from helpers import LAB_SKIP_REASON
from helpers.modules import collections_path
from helpers.playbook import run_playbook

pytestmark = pytest.mark.skipif(LAB_SKIP_REASON is not None, reason=LAB_SKIP_REASON or "")

MIB = 1 << 20
IMAGE = "/var/lib/p2pfleet/roles-test.img"      # the lab's /srv/images is read-only
IMAGE_SIZE = 192 * MIB
MANIFESTS = "/var/lib/p2pfleet/manifests"
ROLES = [
    {"name": "Tracker", "hosts": "tracker", "become": True, "roles": ["p2pfleet.imaging.tracker"]},
    {"name": "Agents", "hosts": "seeders:terminals", "become": True, "roles": ["p2pfleet.imaging.swarm_client"]},
]


@pytest.fixture(scope="module")
def converged(lab, tmp_path_factory):
    collections = collections_path(tmp_path_factory.mktemp("collections"))
    first = run_playbook(lab.inventory, collections, ROLES)
    assert first.rc == 0, first.tail()
    return collections, first


# The module's first converge (its fixture) and this one count together towards pytest's
# timeout; on a loaded machine the two took 300 s.
@pytest.mark.timeout(600)
def test_a_second_converge_changes_nothing(lab, converged):
    collections, first = converged
    assert "p2pfleet.imaging.engine : Unpack the engine" in first.changed_tasks("t01"), first.changed_tasks("t01")
    second = run_playbook(lab.inventory, collections, ROLES)
    assert second.rc == 0, second.tail()
    assert set(second.recap) == set(lab.hosts)
    assert all(stats["changed"] == 0 for stats in second.recap.values()), second.changed


def test_services_run_with_configs_rendered_from_the_inventory(lab, converged):
    addresses = sorted(f"{lab.address(name)}/32" for name in lab.hosts)
    server = lab.testinfra("server")
    assert server.service("p2pfleet-tracker").is_running and server.service("p2pfleet-tracker").is_enabled
    config = server.file("/etc/p2pfleet/tracker.yml")
    assert (config.user, config.mode) == ("root", 0o600)
    tracker = yaml.safe_load(config.content_string)
    assert sorted(tracker["allowed_networks"]) == addresses
    rooms = {}
    for name in lab.terminals:
        rooms.setdefault(f"room{lab.hosts[name]['room']}", []).append(name)
    assert {group: sorted(spec["hosts"]) for group, spec in tracker["groups"].items()} == rooms
    assert "server" in tracker["policy"]["seeders"]
    assert tracker["hosts"][lab.address("t01")] == "t01"
    # the tracker answers the controller (the fleet page's address the playbooks print)
    with urllib.request.urlopen(f"http://{lab.address('server')}:6969/status.json", timeout=10) as reply:
        assert reply.status == 200 and "torrents" in json.load(reply)

    for name in ["server", *lab.terminals]:
        host = lab.testinfra(name)
        assert host.service("p2pfleet-agent").is_running, name
        socket = host.file("/run/p2pfleet/agent.sock")
        assert socket.is_socket and (socket.user, socket.mode) == ("root", 0o600), name
        agent = yaml.safe_load(host.file("/etc/p2pfleet/agent.yml").content_string)
        assert agent["host_name"] == name
        assert agent["trackers"] == [f"http://{lab.address('server')}:6969/announce"]
        assert sorted(agent["allowed_networks"]) == addresses
        # Terminals guard their running and fallback slots; the seeder has none.
        assert [s["name"] for s in agent.get("slots", [])] == ([] if name == "server" else ["A", "B"]), name


def test_a_config_the_engine_refuses_is_never_installed(lab, converged):
    collections, _ = converged
    before = lab.ssh("t02", "sha256sum /etc/p2pfleet/agent.yml")
    run = run_playbook(lab.inventory, collections, [dict(ROLES[1], hosts="t02")],
                       "-e", "swarm_client_stall_timeout=100000")
    assert run.rc != 0
    assert "stall_timeout: must be seconds in 0..86400" in run.out, run.tail()
    assert lab.ssh("t02", "sha256sum /etc/p2pfleet/agent.yml") == before
    assert lab.testinfra("t02").service("p2pfleet-agent").is_running


def test_inventory_mistakes_are_named(lab, converged, tmp_path):
    collections, _ = converged
    run = run_playbook(lab.inventory, collections, [dict(ROLES[0])], "-e", '{"tracker_topology_groups": ["room9"]}')
    assert run.rc != 0 and "tracker_topology_groups names groups the inventory does not have: room9" in run.flat()
    # a peer the inventory names only by DNS name: the agent cannot filter peers by it, and
    # the play says which host to fix
    with open(lab.inventory) as f:
        inventory = yaml.safe_load(f)
    inventory["all"]["children"]["terminals"]["hosts"]["t03"]["ansible_host"] = "t03.lab.example"
    named = tmp_path / "inventory.yml"
    named.write_text(yaml.safe_dump(inventory))
    before = lab.ssh("t02", "sha256sum /etc/p2pfleet/agent.yml")
    run = run_playbook(str(named), collections, [dict(ROLES[1], hosts="t02")])
    assert run.rc != 0
    assert "needs an IP address as ansible_host; these have none: t03" in run.flat(), run.tail()
    assert lab.ssh("t02", "sha256sum /etc/p2pfleet/agent.yml") == before


def _seed_play():
    return {"name": "Seed", "hosts": "seeders", "become": True, "gather_facts": False, "tasks": [
        {"name": "Make the manifest", "p2pfleet.imaging.image_manifest": {"image": IMAGE, "dest": MANIFESTS},
         "register": "m"},
        {"name": "Allow it on the tracker", "ansible.builtin.copy": {
            "src": "{{ m.manifest }}", "dest": "/var/lib/p2pfleet-tracker/manifests/", "remote_src": True,
            "mode": "0644"}, "register": "allowed"},
        {"name": "Rescan", "ansible.builtin.systemd_service": {"name": "p2pfleet-tracker", "state": "reloaded"},
         "when": "allowed is changed"},
        {"name": "Bring the manifest home", "ansible.builtin.fetch": {"src": "{{ item }}", "dest": "{{ out }}/",
                                                                      "flat": True},
         "loop": ["{{ m.manifest }}", "{{ m.torrent }}"]},
        {"name": "Seed", "p2pfleet.imaging.swarm_job": {"action": "seed", "manifest": "{{ m.manifest }}",
                                                         "image": IMAGE}},
    ]}


def _fetch_play(wait):
    manifest = f"{MANIFESTS}/roles-test.img.manifest.json"
    tasks = [
        {"name": "Give the manifest", "ansible.builtin.copy": {"src": "{{ item }}", "dest": f"{MANIFESTS}/",
                                                               "mode": "0600"},
         "loop": ["{{ out }}/roles-test.img.manifest.json", "{{ out }}/roles-test.img.torrent"]},
        {"name": "Find the slots", "p2pfleet.imaging.slot_info": {"slots": "{{ p2pfleet_slots }}"}, "register": "slots"},
        {"name": "Fetch into the inactive slot", "p2pfleet.imaging.swarm_job": {
            "manifest": manifest, "target": "{{ slots.inactive.device }}", "require_device": True}},
    ]
    if wait:
        tasks.append({"name": "Wait for the job", "p2pfleet.imaging.swarm_job_info": {"manifest": manifest},
                      "register": "info", "until": "info.done", "retries": 150, "delay": 2})
        tasks.append({"name": "Report", "ansible.builtin.copy": {"content": "{{ info | to_json }}",
                                                                 "dest": "{{ out }}/{{ inventory_hostname }}.json"},
                      "delegate_to": "localhost", "changed_when": False})      # the test's own record
    return {"name": "Fetch", "hosts": "terminals", "become": True, "gather_facts": False, "tasks": tasks}


# The agent's own view of a job, over its root-only socket (the tracker only hears of
# progress at each announce).
ASK_JOB = """
import http.client, json, socket, sys
class Unix(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect('/run/p2pfleet/agent.sock')
conn = Unix('agent')
conn.request('GET', '/v1/jobs/' + sys.argv[1])
reply = conn.getresponse()
print(reply.status, reply.read().decode())
"""


def _job(lab, host, info_hash, tmp_path):
    script = tmp_path / "ask_job.py"
    script.write_text(ASK_JOB)
    with open(script, "rb") as stdin:
        proc = lab.ssh(host, f"python3 - {info_hash}", stdin=stdin, check=False)
    status, _, body = proc.partition(" ")
    if status != "200":
        return None
    data = json.loads(body)
    return data.get("job", data)


def test_modules_fill_every_inactive_slot_and_a_killed_agent_resumes(lab, converged, tmp_path):
    collections, _ = converged
    out = str(tmp_path)
    lab.ssh("server", f"head -c {IMAGE_SIZE} /dev/urandom > {IMAGE}", timeout=120)
    seeded = run_playbook(lab.inventory, collections, [_seed_play()], "-e", f"out={out}")
    assert seeded.rc == 0, seeded.tail()
    with open(os.path.join(out, "roles-test.img.manifest.json")) as f:
        info_hash = json.load(f)["info_hash"]

    started = run_playbook(lab.inventory, collections, [_fetch_play(wait=False)], "-e", f"out={out}")
    assert started.rc == 0, started.tail()
    assert "Fetch into the inactive slot" in started.changed_tasks("t01")
    # kill t01's agent while its job is midway: systemd starts it again, the job resumes from its record
    deadline = time.monotonic() + 120
    while True:
        job = _job(lab, "t01", info_hash, tmp_path)
        done = job["bytes_done"] if job else 0
        if job and job["state"] == "downloading" and IMAGE_SIZE * 0.15 < done < IMAGE_SIZE * 0.85:
            break
        assert time.monotonic() < deadline, f"t01's job never got midway: {job}"
        time.sleep(0.2)
    lab.ssh("t01", "kill -KILL $(systemctl show --property=MainPID --value p2pfleet-agent)")

    finished = run_playbook(lab.inventory, collections, [_fetch_play(wait=True)], "-e", f"out={out}")
    assert finished.rc == 0, finished.tail()
    # the job was found, not put again, on every terminal (t01's after its agent came back)
    assert "Fetch into the inactive slot" not in finished.changed_tasks(), finished.changed
    want = lab.ssh("server", f"sha256sum < {IMAGE}").split()[0]
    for name in lab.terminals:
        with open(os.path.join(out, f"{name}.json")) as f:
            job = json.load(f)["job"]
        assert job["state"] in ("verified", "seeding"), (name, job)
        got = lab.ssh(name, f"head -c {IMAGE_SIZE} {job['path']} | sha256sum", timeout=120).split()[0]
        assert got == want, f"{name}: slot bytes differ from the image"
    with open(os.path.join(out, "t01.json")) as f:
        t01 = json.load(f)["job"]
    assert t01["resumed_bytes"] > 0, t01            # restarted from saved pieces, not from zero

    again = run_playbook(lab.inventory, collections, [_fetch_play(wait=True)], "-e", f"out={out}")
    assert again.rc == 0, again.tail()
    assert all(stats["changed"] == 0 for host, stats in again.recap.items() if host != "localhost"), again.changed

    # release the slots: later tests flash and boot them
    stop = {"hosts": "terminals", "become": True, "gather_facts": False, "tasks": [
        {"p2pfleet.imaging.slot_info": {"slots": "{{ p2pfleet_slots }}"}, "register": "slots"},
        {"p2pfleet.imaging.swarm_job": {"manifest": f"{MANIFESTS}/roles-test.img.manifest.json",
                                        "target": "{{ slots.inactive.device }}", "state": "absent"}}]}
    removed = run_playbook(lab.inventory, collections, [stop])
    assert removed.rc == 0, removed.tail()


def test_state_absent_removes_the_agent_and_keeps_its_records(lab, converged):
    collections, _ = converged
    run = run_playbook(lab.inventory, collections, [dict(ROLES[1], hosts="t04")], "-e", "swarm_client_state=absent")
    assert run.rc == 0, run.tail()
    host = lab.testinfra("t04")
    assert not host.service("p2pfleet-agent").is_running
    assert not host.file("/etc/systemd/system/p2pfleet-agent.service").exists
    assert not host.file("/opt/p2pfleet").exists
    assert host.file("/var/lib/p2pfleet/manifests").is_directory
    again = run_playbook(lab.inventory, collections, [dict(ROLES[1], hosts="t04")], "-e", "swarm_client_state=absent")
    assert again.rc == 0 and again.recap["t04"]["changed"] == 0, again.changed
