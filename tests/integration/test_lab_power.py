"""``lab power``: a hard power cut of a lab host, as a real terminal sees one, and a power-on
that boots it as a cold boot does.

On the session lab. A terminal whose agent seeds an image the server's tracker knows is cut
off: nothing of it runs (firmware, nspawn, its namespace's processes), SSH gets no answer, the
tracker's row goes silent (no clean ``stopped`` announce: the agent got no SIGTERM), the
disk and namespace stay and its file systems are clean. Powered on, it boots the slot its
GRUB environment selects, sshd answers, the agent runs and announces again. Every test leaves
its terminal powered on, even when it fails.
"""
import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest

from helpers import LAB_SKIP_REASON, ROOT
from lab import lab as labmod
from helpers.modules import collections_path
from helpers.playbook import run_playbook

pytestmark = pytest.mark.skipif(LAB_SKIP_REASON is not None, reason=LAB_SKIP_REASON or "")

LAB_CLI = [sys.executable, os.path.join(ROOT, "bin", "p2pfleet-lab")]
AGENT_TERMINAL = "t04"      # its agent seeds; test_roles checks t01's first converge, t02/t03 elsewhere
BOOT_TERMINAL = "t02"       # its slot B gets release 2 and a one-shot next_entry
IMAGE = "/var/lib/p2pfleet/power-test.img"
MANIFESTS = "/var/lib/p2pfleet/manifests"
TRACKER_MANIFESTS = "/var/lib/p2pfleet-tracker/manifests"
GRUBENV = "/boot/grub/grubenv"


def cli(lab, *args, timeout=300):
    return subprocess.run(LAB_CLI + ["--lab", lab.name, *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def ensure_on(lab, host):
    """The host powered on and answering (teardown of every test, whatever happened)."""
    if not lab.is_powered(host):
        lab.power_on(host)
    lab.wait_for(f"{host} to answer over SSH", lambda: labmod.ssh(lab.state, host, "true").returncode == 0, 180)


def tracker_row(lab, info_hash, host):
    url = f"http://{lab.address('server')}:6969/status/{info_hash}.json"
    with urllib.request.urlopen(url, timeout=10) as reply:
        rows = [row for row in json.load(reply).get("peers", []) if row["host"] == host]
    return rows[0] if rows else None


@pytest.fixture(scope="module")
def seeding(lab, tmp_path_factory):
    """The tracker on the server and the agent on AGENT_TERMINAL (the roles, for real), the agent
    seeding a small image whose manifest the tracker knows; yields the info hash. Only the
    tracker and this terminal are converged (test_roles converges the rest)."""
    collections = collections_path(tmp_path_factory.mktemp("collections"))
    out = str(tmp_path_factory.mktemp("power"))
    manifest = f"{MANIFESTS}/power-test.img.manifest.json"
    seed = {"name": "Seed", "hosts": AGENT_TERMINAL, "become": True, "gather_facts": False, "tasks": [
        {"name": "An image", "ansible.builtin.command": f"dd if=/dev/urandom of={IMAGE} bs=1M count=4",
         "args": {"creates": IMAGE}},
        {"name": "Its manifest", "p2pfleet.imaging.image_manifest": {"image": IMAGE, "dest": MANIFESTS},
         "register": "m"},
        {"name": "Bring it home", "ansible.builtin.fetch": {"src": "{{ m.manifest }}", "dest": f"{out}/",
                                                           "flat": True}},
        {"name": "The info hash", "ansible.builtin.copy": {"content": "{{ m.info_hash }}",
                                                           "dest": f"{out}/info_hash"},
         "delegate_to": "localhost"},
        {"name": "Allow it on the tracker", "ansible.builtin.copy": {
            "src": f"{out}/power-test.img.manifest.json", "dest": f"{TRACKER_MANIFESTS}/", "mode": "0644"},
         "delegate_to": "server", "register": "allowed"},
        {"name": "Rescan", "ansible.builtin.systemd_service": {"name": "p2pfleet-tracker", "state": "reloaded"},
         "delegate_to": "server", "when": "allowed is changed"},
        {"name": "Seed", "p2pfleet.imaging.swarm_job": {"action": "seed", "manifest": manifest, "image": IMAGE}},
    ]}
    plays = [{"name": "Tracker", "hosts": "tracker", "become": True, "roles": ["p2pfleet.imaging.tracker"]},
             {"name": "Agent", "hosts": AGENT_TERMINAL, "become": True, "roles": ["p2pfleet.imaging.swarm_client"]},
             seed]
    run = run_playbook(lab.inventory, collections, plays)
    assert run.rc == 0, run.tail()
    with open(os.path.join(out, "info_hash")) as f:
        info_hash = f.read().strip()
    try:
        yield info_hash
    finally:
        ensure_on(lab, AGENT_TERMINAL)
        forget = [{"name": "Forget the job", "hosts": AGENT_TERMINAL, "become": True, "gather_facts": False,
                   "tasks": [{"p2pfleet.imaging.swarm_job": {"action": "seed", "manifest": manifest, "image": IMAGE,
                                                                "state": "absent"}},
                             {"ansible.builtin.file": {"path": IMAGE, "state": "absent"}}]},
                  {"name": "Forget the manifest", "hosts": "server", "become": True, "gather_facts": False,
                   "tasks": [{"ansible.builtin.file": {"path": f"{TRACKER_MANIFESTS}/power-test.img.manifest.json",
                                                       "state": "absent"}},
                             {"ansible.builtin.systemd_service": {"name": "p2pfleet-tracker", "state": "reloaded"}}]}]
        run = run_playbook(lab.inventory, collections, forget)
        assert run.rc == 0, run.tail()


def nspawn_of(lab, host):
    """Pids of systemd-nspawn processes running this host's machine."""
    machine = f"--machine={lab.hosts[host]['netns']}".encode()
    pids = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if machine in f.read().split(b"\0"):
                    pids.append(int(entry))
        except OSError:
            pass
    return pids


def netns_pids(lab, host):
    return subprocess.run(["ip", "netns", "pids", lab.hosts[host]["netns"]], capture_output=True, text=True,
                          check=True).stdout.split()


def loop_backing(device):
    return open(f"/sys/block/{os.path.basename(device)}/loop/backing_file").read().strip()


def test_power_cut_while_the_agent_seeds_and_power_on(lab, seeding):
    host, info_hash = AGENT_TERMINAL, seeding
    hostdir = os.path.join(lab.state["dir"], "hosts", host)
    disk = lab.hosts[host]["disk"]
    lab.wait_for("the agent's announce on the tracker",
                 lambda: (tracker_row(lab, info_hash, host) or {}).get("state") in ("seeding", "complete"), 60)
    agent_pid = lab.ssh(host, "systemctl show -P MainPID p2pfleet-agent").strip()
    assert agent_pid not in ("", "0")
    firmware = labmod.firmware_pid(lab.state, host)
    assert firmware and nspawn_of(lab, host) and lab.firmware(host)["state"] == "running"
    job_records = sorted(os.listdir(os.path.join(hostdir, "state")))  # the state partition, seen from outside
    try:
        off = cli(lab, "power", "off", host)
        assert off.returncode == 0 and off.stdout == f"{host}: power cut\n", off.stdout + off.stderr
        # nothing of the host runs, nothing restarts it
        assert not os.path.exists(f"/proc/{firmware}/cmdline") or not open(f"/proc/{firmware}/cmdline").read()
        assert nspawn_of(lab, host) == [] and netns_pids(lab, host) == []
        time.sleep(3)
        assert nspawn_of(lab, host) == [] and netns_pids(lab, host) == [] and not lab.is_powered(host)
        assert "power cut" in lab.firmware_log(host).splitlines()[-1]
        proc = labmod.ssh(lab.state, host, "true", timeout=30)
        assert proc.returncode == 255, (proc.returncode, proc.stderr)
        status = cli(lab, "power", "status", host)
        assert status.returncode == 0 and status.stdout == f"{host}: off\n", status.stdout
        rows = {line.split()[0]: line.split() for line in cli(lab, "status").stdout.splitlines()[2:]}
        assert rows[host][4] == "off" and rows["server"][4] == "running", rows
        # off again: nothing done, and said so
        again = cli(lab, "power", "off", host)
        assert again.returncode == 0 and again.stdout == f"{host}: already off, nothing done\n", again.stdout

        # the disk and the namespace stay; the slots are released and their file systems clean
        # (the page cache of the machine's kernel survived the cut: no torn write)
        assert loop_backing(disk["disk"]) == os.path.join(hostdir, "disk.img")
        assert all(os.path.exists(dev) for dev in disk.values())
        assert not labmod.in_use(disk["system_a"]) and not labmod.in_use(disk["system_b"])
        fsck = subprocess.run(["e2fsck", "-fn", disk["system_a"]], capture_output=True, text=True)
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
        assert lab.hosts[host]["netns"] in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                                          text=True).stdout
        assert sorted(os.listdir(os.path.join(hostdir, "state"))) == job_records

        # the agent got no SIGTERM, so it could not say "stopped": the tracker sees it go silent
        row = lab.wait_for("the tracker to see the terminal go silent",
                           lambda: (r := tracker_row(lab, info_hash, host)) and r["state"] in ("silent", "stopped")
                           and r, 90)
        assert row["state"] == "silent", row
    finally:
        on = cli(lab, "power", "on", host)
    assert on.returncode == 0 and on.stdout == f"{host}: powered on, booted slot A\n", on.stdout + on.stderr
    # its GRUB environment selects A (saved_entry=A), and A is what runs
    report = lab.ssh(host, f"cat /etc/lab-release; grub-editenv {GRUBENV} list").splitlines()
    assert report[0] == "1" and "saved_entry=A" in report[1:], report
    assert lab.firmware(host)["slot"] == "A" and lab.firmware(host)["boots"] == 1
    assert labmod.firmware_pid(lab.state, host) not in (None, firmware)
    assert lab.ssh(host, "systemctl is-active p2pfleet-agent").strip() == "active"
    # its link is capped as before (its route is back: SSH above)
    assert "tbf" in subprocess.run(["ip", "netns", "exec", lab.hosts[host]["netns"], "tc", "qdisc", "show", "dev",
                                    "eth0"], capture_output=True, text=True).stdout
    # the agent resumed its seed job by itself and announces again
    lab.wait_for("the agent's announce after the power-on",
                 lambda: (tracker_row(lab, info_hash, host) or {}).get("state") in ("seeding", "complete"), 60)
    again = cli(lab, "power", "on", host)
    assert again.returncode == 0 and again.stdout == f"{host}: already on, nothing done\n", again.stdout


def test_power_on_applies_the_boot_rule_like_a_cold_boot(lab):
    """A one-shot next_entry=B set before the cut: the power-on boots B once (release 2) and
    clears it; the next power cycle is back on saved_entry, A."""
    host = BOOT_TERMINAL
    labmod.flash(lab.state, host, "B", "release-2.img")
    try:
        lab.ssh(host, f"grub-editenv {GRUBENV} set next_entry=B")
        assert lab.power_off(host) is True
        assert lab.power_off(host) is False
        assert lab.power_on(host) is True
        assert lab.power_on(host) is False
        assert lab.ssh(host, "cat /etc/lab-release").strip() == "2"
        env = lab.ssh(host, f"grub-editenv {GRUBENV} list").split()
        assert "saved_entry=A" in env and "next_entry=" in env, env     # the one shot is used up
        assert lab.firmware(host)["slot"] == "B"
        lab.power_off(host)
        lab.power_on(host)
        assert lab.ssh(host, "cat /etc/lab-release").strip() == "1" and lab.firmware(host)["slot"] == "A"
    finally:
        ensure_on(lab, host)
        if lab.firmware(host).get("slot") != "A":       # failed half-way: back to A, as found
            lab.ssh(host, f"grub-editenv {GRUBENV} set saved_entry=A next_entry=")
            lab.power_off(host)
            lab.power_on(host)


def test_power_verbs_name_what_is_wrong(lab):
    unknown = cli(lab, "power", "off", "t04", "t99")
    assert unknown.returncode == 1 and unknown.stdout == ""
    assert unknown.stderr.count("\n") == 1 and "no host 't99'" in unknown.stderr, unknown.stderr
    assert lab.is_powered("t04")                                   # nothing done before the names were checked
    status = cli(lab, "power", "status", *lab.hosts)
    assert status.returncode == 0
    assert [line.split(":")[0] for line in status.stdout.splitlines()] == list(lab.hosts)
    assert all(line.split()[1] == "on" for line in status.stdout.splitlines()), status.stdout
