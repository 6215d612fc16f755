"""The lab network: measured rates against the caps, the room uplink, and no way out of the lab.

Rates are measured with iperf3 between lab hosts (bounded 3-second transfers, the first second
omitted as TCP's ramp-up). TCP goodput is below the line rate by the headers (1448 of 1514
bytes per full frame, ~4 %), well inside the 10 % the caps are held to.
"""
import json
import subprocess

import pytest

from lab import lab as labmod
from helpers import SESSION_LAB

MBIT = 1e6
RATE = 100 * MBIT       # SESSION_LAB["rate"]
UPLINK = 150 * MBIT     # SESSION_LAB["uplink"]


def within_10_percent(measured, cap):
    return abs(measured - cap) <= 0.10 * cap


@pytest.fixture(scope="module")
def iperf_servers(lab):
    """iperf3 servers on the server and on t03 (room 2), port 5201; gone when the lab goes down."""
    assert (SESSION_LAB["rate"], SESSION_LAB["uplink"]) == ("100mbit", "150mbit")
    for host in ("server", "t03"):
        lab.ssh(host, "iperf3 --server --daemon --port 5201")
        lab.wait_for(f"iperf3 on {host}", lambda: lab.ssh(host, "ss -Hltn 'sport = :5201'").strip(), timeout=10)
    return {host: lab.address(host) for host in ("server", "t03")}


def iperf(lab, host, server, port, reverse=False):
    """Start one bounded iperf3 client in ``host``; returns the process (stdout: iperf3's JSON)."""
    cmd = f"iperf3 --client {server} --port {port} --time 3 --omit 1 --json" + (" --reverse" if reverse else "")
    return subprocess.Popen(labmod.ssh_command(lab.state, host, cmd), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def received_rate(proc):
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, f"iperf3 failed: {err or out[-500:]}"
    return json.loads(out)["end"]["sum_received"]["bits_per_second"]


@pytest.mark.parametrize("reverse", [False, True], ids=["upload", "download"])
def test_host_link_rate_is_the_cap(lab, iperf_servers, reverse):
    # t04 (room 2) and the server each have a 100 Mbit/s link; the uplink (150) does not limit
    rate = received_rate(iperf(lab, "t04", iperf_servers["server"], 5201, reverse))
    assert within_10_percent(rate, RATE), f"measured {rate / MBIT:.1f} Mbit/s, cap {RATE / MBIT:.0f}"


@pytest.mark.parametrize("reverse", [False, True], ids=["upload", "download"])
def test_room_uplink_caps_the_sum_of_the_room(lab, iperf_servers, reverse):
    # t01 and t02 (room 1) each talk to a peer of its own outside the room (the server, t03 in
    # room 2): together they could move 200 Mbit/s, the room's uplink lets 150 through
    assert [lab.hosts[h]["room"] for h in ("t01", "t02", "t03")] == [1, 1, 2]
    procs = [iperf(lab, "t01", iperf_servers["server"], 5201, reverse),
             iperf(lab, "t02", iperf_servers["t03"], 5201, reverse)]
    rates = [received_rate(p) for p in procs]
    assert within_10_percent(sum(rates), UPLINK), \
        f"room 1 sum {sum(rates) / MBIT:.1f} Mbit/s ({', '.join(f'{r / MBIT:.1f}' for r in rates)}), " \
        f"uplink cap {UPLINK / MBIT:.0f}"


def test_no_host_has_a_route_out_of_the_lab(lab):
    # `ip route get` asks the routing table only: nothing is sent anywhere
    for host in lab.hosts:
        proc = labmod.ssh(lab.state, host, "ip route get 192.0.2.1")
        assert proc.returncode != 0 and "unreachable" in proc.stderr, f"{host}: {proc.stdout}{proc.stderr}"
        assert lab.ssh(host, "ip route show default") == "", f"{host} has a default route"
    router = f"{lab.state['prefix']}-router"
    routes = subprocess.run(["ip", "netns", "exec", router, "ip", "route", "show", "default"],
                            capture_output=True, text=True, check=True).stdout
    assert routes == "", f"the lab router has a default route: {routes}"


def test_hosts_reach_each_other_across_rooms(lab):
    # room 1 -> room 2 and room 2 -> server, through the router
    lab.ssh("t01", f"ping -c 1 -W 2 {lab.address('t03')} || python3 -c "
            f"\"import socket; socket.create_connection(('{lab.address('t03')}', 22), 2)\"")
    lab.ssh("t04", f"python3 -c \"import socket; socket.create_connection(('{lab.address('server')}', 22), 2)\"")
