"""A light lab (`lab up --light`): the full lab's network, caps, addresses and disks, with hosts
that are bare network namespaces; what needs a booted host refuses it in one line; `lab down`
leaves nothing of it.

The machine is shared: everything is looked for by this lab's own prefix and directory.
"""
import os
import shutil
import stat
import subprocess
import sys
import time

import pytest

from helpers import ROOT
from lab import disk, lab as labmod

LAB_CLI = [sys.executable, os.path.join(ROOT, "bin", "p2pfleet-lab")]
PORT = 7001
# Answers every connection with its host's name, until killed (by `lab down`, with its host).
LISTENER = ("import socket, sys\n"
            "s = socket.create_server(('0.0.0.0', %d))\n"
            "while True:\n"
            "    c, _ = s.accept()\n"
            "    c.sendall(sys.argv[1].encode())\n"
            "    c.close()\n") % PORT
CONNECT = ("import socket, sys, time\n"
           "deadline = time.monotonic() + 10\n"
           "while True:\n"
           "    try:\n"
           "        print(socket.create_connection((sys.argv[1], %d), timeout=3).recv(64).decode())\n"
           "        break\n"
           "    except ConnectionRefusedError:\n"
           "        if time.monotonic() > deadline:\n"
           "            raise\n"
           "        time.sleep(0.1)\n") % PORT


def _usable():
    if os.geteuid() != 0:
        return "a light lab needs root"
    missing = [tool for tool in labmod.LIGHT_TOOLS if not shutil.which(tool)]
    return f"a light lab needs {', '.join(missing)}" if missing else None


SKIP_REASON = _usable()
needs_light_lab = pytest.mark.skipif(SKIP_REASON is not None, reason=SKIP_REASON or "")


def cli(*args, timeout=120):
    return subprocess.run(LAB_CLI + list(args), capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def in_netns(netns, *argv):
    return subprocess.run(["ip", "netns", "exec", netns, *argv], capture_output=True, text=True, timeout=30)


def namespaces(prefix):
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(prefix + "-")]


@needs_light_lab
def test_light_lab_is_the_full_network_with_bare_hosts_and_goes_down_leaving_nothing():
    name = f"ltl{os.getpid()}"
    started = time.monotonic()
    up = cli("--lab", name, "up", "--light", "--terminals", "6", "--rooms", "2", "--rate", "100mbit",
             "--uplink", "50mbit", "--slot-size", "64M")
    took = time.monotonic() - started
    listeners, state = [], None
    try:
        assert up.returncode == 0, up.stderr
        assert up.stdout.startswith("light lab: hosts are network namespaces"), up.stdout
        state = labmod.load(name)
        prefix, hosts = state["prefix"], state["hosts"]
        assert state["light"] is True and state["inventory"] is None and state["key"] is None
        terminals = sorted(h for h in hosts if h != "server")
        assert [hosts[t]["room"] for t in terminals] == [1, 1, 1, 2, 2, 2]
        assert took < 30, f"a light lab of 6 took {took:.1f} s to come up"

        # the full lab's caps: host links on both ends, the room's uplink on both ends
        assert "rate 100Mbit" in in_netns(hosts["t01"]["netns"], "tc", "qdisc", "show", "dev", "eth0").stdout
        assert "rate 100Mbit" in in_netns(f"{prefix}-room1", "tc", "qdisc", "show", "dev", "t01").stdout
        assert "rate 50Mbit" in in_netns(f"{prefix}-router", "tc", "qdisc", "show", "dev", "room2").stdout
        assert "rate 50Mbit" in in_netns(f"{prefix}-room2", "tc", "qdisc", "show", "dev", "uplink").stdout

        # a terminal reaches the other room and the server through the router; nothing leaves the lab
        for host in ("server", "t04"):
            listeners.append(subprocess.Popen(["ip", "netns", "exec", hosts[host]["netns"], sys.executable,
                                               "-c", LISTENER, host], stdout=subprocess.DEVNULL,
                                              stderr=subprocess.DEVNULL))
        for host in ("server", "t04"):
            reply = in_netns(hosts["t01"]["netns"], sys.executable, "-c", CONNECT, hosts[host]["address"])
            assert reply.returncode == 0 and reply.stdout.strip() == host, reply.stderr
        out = in_netns(hosts["t01"]["netns"], "ip", "route", "get", "192.0.2.1")
        assert out.returncode != 0 and "unreachable" in out.stderr, out.stdout + out.stderr

        # every terminal's disk: a GPT with the full lab's labels, its slots block devices
        for t in terminals:
            parts = hosts[t]["disk"]
            labels = subprocess.run(["partx", "-g", "-o", "NAME", parts["disk"]], capture_output=True, text=True,
                                    check=True).stdout.split()
            assert labels == list(disk.PARTITIONS), labels
            for label in disk.PARTITIONS:
                assert stat.S_ISBLK(os.stat(parts[label]).st_mode), f"{t}: {parts[label]} is no block device"

        # what needs a booted host refuses in one line
        for args, what in [(["ssh", "t01"], "no host to ssh into"), (["reboot", "t01"], "no host to reboot"),
                           (["power", "off", "t01"], "no firmware to power a host off or on"),
                           (["power", "on", "t01"], "no firmware to power a host off or on"),
                           (["image", "3"], "no root file system to build images from")]:
            proc = cli("--lab", name, *args)
            assert proc.returncode == 1 and proc.stdout == "", proc
            assert proc.stderr == f"lab: lab {name} is light (bare network namespaces): {what}\n", proc.stderr
        status = cli("--lab", name, "status")
        assert status.returncode == 0 and status.stdout.count(" netns ") == 7, status.stdout
    finally:
        down = cli("--lab", name, "down") if os.path.isdir(labmod.lab_dir(name)) else None
    assert down is not None and down.returncode == 0, down and down.stderr
    for listener in listeners:                       # killed with their hosts
        assert listener.wait(10) is not None
    assert not os.path.exists(labmod.lab_dir(name))
    assert namespaces(state["prefix"]) == []
    assert disk.loops_backed_by(labmod.lab_dir(name)) == []


# Every host sends one datagram to every other host of its room, so each resolves each (ARP).
GREET_ALL = ("import socket, sys\n"
             "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
             "for peer in sys.argv[1:]:\n"
             "    s.sendto(b'hello', (peer, 9))\n")


@needs_light_lab
def test_forty_hosts_on_one_switch_all_resolve_each_other():
    """The kernel's neighbour table is one for the whole machine: 40 hosts that all talk to
    each other need ~1,600 entries, past its default limit (1,024). Over it, the last hosts to
    talk resolved nobody ("neighbor table overflow!") and sat with no peer for minutes in
    the 40-terminal benchmark. The lab raises the limit; here every host reaches every host."""
    name = f"lt40{os.getpid()}"
    state = labmod.up(name, terminals=40, rooms=1, rate="100mbit", light=True)
    try:
        hosts = {n: h for n, h in state["hosts"].items() if h["role"] == "terminal"}     # one switch
        addresses = [h["address"] for h in hosts.values()]
        procs = [subprocess.Popen(["ip", "netns", "exec", h["netns"], sys.executable, "-c", GREET_ALL,
                                   *[a for a in addresses if a != h["address"]]]) for h in hosts.values()]
        assert all(p.wait(60) == 0 for p in procs)
        time.sleep(1.0)
        unresolved = {}
        for host_name, host in hosts.items():
            table = in_netns(host["netns"], "ip", "-4", "neigh", "show", "dev", "eth0").stdout
            known = {line.split()[0] for line in table.splitlines() if "lladdr" in line}
            missing = [a for a in addresses if a != host["address"] and a not in known]
            if missing:
                unresolved[host_name] = len(missing)
        assert not unresolved, f"hosts that could not resolve some others (host: how many): {unresolved}"
    finally:
        labmod.down(name)
