"""A lab's life: up beside another lab, down (or a failed up) leaving the machine as it was; the CLI.

The machine is shared (other labs, other people's loop devices and namespaces come and go), so
a snapshot keeps what a lab could have made: namespaces and root-namespace links named like a
lab's (``pflNN-``), mounts and loop devices under the labs' directory, nspawn's leftovers.
"""
import os
import re
import subprocess
import sys

import pytest

from helpers import ROOT, needs_lab
from lab import lab as labmod, net
from lab.sh import LabError

LAB_CLI = [sys.executable, os.path.join(ROOT, "bin", "p2pfleet-lab")]
LABBY = re.compile(r"pfl\d\d-")


def snapshot():
    netns = {line.split()[0] for line in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                                         text=True, check=True).stdout.splitlines()}
    links = set(re.findall(r"^\d+: ([^:@]+)", subprocess.run(["ip", "-o", "link", "show"], capture_output=True,
                                                             text=True, check=True).stdout, re.M))
    with open("/proc/self/mountinfo") as f:
        mounts = {line.split()[4] for line in f}
    loops = set()
    for name in os.listdir("/sys/block"):
        try:
            loops.add((name, open(f"/sys/block/{name}/loop/backing_file").read().strip()))
        except OSError:
            pass
    propagate = "/run/systemd/nspawn/propagate"
    return {
        "netns": {n for n in netns if LABBY.match(n)},
        "links": {n for n in links if LABBY.match(n)},
        "mounts": {m for m in mounts if m.startswith((labmod.LABS, "/run/netns", propagate))},
        "loops": {loop for loop in loops if loop[1].startswith(labmod.LABS)},
        "nspawn": set(os.listdir(propagate)) if os.path.isdir(propagate) else set(),
        "lab dirs": set(os.listdir(labmod.LABS)) if os.path.isdir(labmod.LABS) else set(),
    }


def cli(*args, timeout=300):
    return subprocess.run(LAB_CLI + list(args), capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.fixture
def machine_before(lab):
    """The snapshot before a second lab comes up (the session lab runs all along)."""
    net.prepare_host()
    return snapshot()


@needs_lab
def test_second_lab_beside_the_session_lab_then_down_leaves_nothing(lab, machine_before):
    name = f"pyd{os.getpid()}"
    proc = cli("--lab", name, "up", "--terminals", "2", "--rooms", "1", "--rate", "50mbit", "--slot-size", "1G")
    assert proc.returncode == 0, proc.stderr
    state = labmod.load(name)
    assert state["prefix"] != lab.state["prefix"] and state["network"] != lab.state["network"]
    during = snapshot()
    assert len(during["netns"] - machine_before["netns"]) == 6        # core, router, room1, 3 hosts
    assert len(during["loops"] - machine_before["loops"]) == 2
    assert during["mounts"] - machine_before["mounts"]
    status = cli("--lab", name, "status")
    assert status.returncode == 0 and len(re.findall(r"running", status.stdout)) == 3, status.stdout
    assert cli("--lab", name, "ssh", "t02", "cat", "/etc/lab-release").stdout == "1\n"

    proc = cli("--lab", name, "down")
    assert proc.returncode == 0, proc.stderr
    assert snapshot() == machine_before
    assert lab.ssh("t01", "cat /etc/lab-release") == "1\n"       # the session lab did not notice


@needs_lab
def test_failed_up_leaves_nothing(lab, machine_before, monkeypatch):
    def no_boot(state, names, timeout):
        raise LabError("simulated: hosts did not boot")
    monkeypatch.setattr(labmod, "wait_booted", no_boot)
    with pytest.raises(LabError, match="simulated"):
        labmod.up(f"pyf{os.getpid()}", terminals=2, rooms=2, rate="10mbit", uplink="20mbit")
    assert snapshot() == machine_before


@needs_lab
def test_unreachable_guard_route_stays(lab):
    routes = subprocess.run(["ip", "route", "show", "type", "unreachable"], capture_output=True, text=True).stdout
    assert "10.213.0.0/16" in routes


@pytest.mark.parametrize("args, message", [
    (["up", "--rooms", "0"], "--rooms must be between 1 and 15"),
    (["up", "--terminals", "1", "--rooms", "2"], "--terminals must be between --rooms (2) and 400"),
    (["up", "--rate", "fast"], "bad rate 'fast'"),
    (["up", "--uplink", "10bit"], "bad rate '10bit'"),
    (["up", "--slot-size", "lots"], "bad size 'lots'"),
    (["--lab", "Bad!", "up"], "bad lab name 'Bad!'"),
    (["--lab", "nosuchlab", "status"], "lab 'nosuchlab' is not up"),
    (["--lab", "nosuchlab", "down"], "lab 'nosuchlab' is not up"),
])
def test_bad_input_gets_one_clear_line(args, message):
    proc = cli(*args)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("lab: ") and message in proc.stderr, proc.stderr
    assert proc.stdout == ""


@needs_lab
def test_slot_size_too_small_for_the_image(lab):
    proc = cli("--lab", "toosmall", "up", "--slot-size", "100M")
    assert proc.returncode == 1 and "slot size 100M is too small for the release image" in proc.stderr
    assert not os.path.exists(os.path.join(labmod.LABS, "toosmall"))


@needs_lab
def test_cli_on_the_session_lab(lab):
    status = cli("--lab", lab.name, "status")
    assert status.returncode == 0
    assert {line.split()[0] for line in status.stdout.splitlines()[2:]} == set(lab.hosts)
    bad_host = cli("--lab", lab.name, "ssh", "t99", "true")
    assert bad_host.returncode == 1 and "no host 't99'" in bad_host.stderr
    bad_slot = cli("--lab", lab.name, "flash", "t01", "C", "release-2.img")
    assert bad_slot.returncode == 1 and "bad slot 'C'" in bad_slot.stderr
    not_terminal = cli("--lab", lab.name, "flash", "server", "B", "release-2.img")
    assert not_terminal.returncode == 1 and "'server' is not a terminal" in not_terminal.stderr
    images = cli("--lab", lab.name, "ssh", "server", "ls", "/srv/images").stdout.split()
    assert {"broken.img", "release-1.img", "release-2.img"} <= set(images)
