"""The lab network: a routed two-level school LAN built from namespaces, bridges and veths.

Every lab owns the range 10.213.16*L.0/20 (L = lab number 0..15) and a name prefix ``pflLL``:

    controller (root ns) --admin-- [core switch] --+-- server
                                                   +-- router --room1-- [room1 switch] -- t01, t02 ...
                                                             --room2-- [room2 switch] -- t03, t04 ...

Switches are bridges in namespaces of their own, so the root namespace holds exactly one lab
interface (``pflLL-admin``). Host links are capped with tbf on both ends (each end shapes what
it sends, i.e. one direction); a room's uplink likewise on both ends.
"""
import ipaddress
import os
import re
import subprocess

from .sh import LabError, run

LAB_RANGE = ipaddress.ip_network("10.213.0.0/16")
MAX_LABS = 16
MAX_ROOMS = 15
MAX_TERMINALS_PER_ROOM = 200


def ensure_unreachable_guard():
    """Keep an ``unreachable`` route for the whole lab range in the root namespace.

    A packet to a lab address while no lab is up must go nowhere, never out of eth0. The
    lab's more specific routes override it while the lab is up; it is never removed.
    """
    if str(LAB_RANGE) not in run("ip", "route", "show", "type", "unreachable", str(LAB_RANGE)):
        run("ip", "route", "add", "unreachable", str(LAB_RANGE))


# The kernel's neighbour (ARP/NDP) table is one for the whole machine, every network
# namespace's entries counted together against gc_thresh3 (default 1024). A lab of N hosts
# on one switch needs about N² entries: at 40 terminals the table overflowed ("neighbor
# table overflow!"), the last hosts to start could resolve nobody and nobody them, and they
# sat with no peer for minutes (issue 18) — an artefact of one machine hosting the lab;
# real terminals each have their own table. Room for 2 labs of 64 hosts in one room.
NEIGH_THRESHOLDS = {"gc_thresh1": 4096, "gc_thresh2": 16384, "gc_thresh3": 32768}


def raise_neighbour_limits():
    """Raise (never lower) the machine's neighbour-table limits to ``NEIGH_THRESHOLDS``."""
    for family in ("ipv4", "ipv6"):
        for key, wanted in NEIGH_THRESHOLDS.items():
            path = f"/proc/sys/net/{family}/neigh/default/{key}"
            with open(path) as f:
                current = int(f.read())
            if current < wanted:
                with open(path, "w") as f:
                    f.write(str(wanted))


def prepare_host():
    """The machine-wide things every lab relies on, made once and left in place.

    - the unreachable guard route (see ensure_unreachable_guard);
    - neighbour-table limits large enough for a lab's hosts (raise_neighbour_limits);
    - /run/netns as a shared bind mount of itself, which ``ip netns add`` makes the first time
      any namespace is added on a machine and never removes (it holds every namespace's
      mount, whoever made it). Made here, before the first lab, so a lab's own teardown
      leaves the mount table exactly as it found it.
    """
    ensure_unreachable_guard()
    raise_neighbour_limits()
    os.makedirs("/run/netns", exist_ok=True)
    if subprocess.run(["mountpoint", "-q", "/run/netns"]).returncode != 0:
        run("mount", "--bind", "/run/netns", "/run/netns")
    run("mount", "--make-shared", "/run/netns")


def lab_network(number):
    return ipaddress.ip_network(f"10.213.{16 * number}.0/20")


def subnet(number, room):
    """Room 0 is the core network (server, router, controller); rooms 1..15 the classrooms."""
    return list(lab_network(number).subnets(new_prefix=24))[room]


def address(number, room, index):
    return subnet(number, room).network_address + index


def parse_rate(text):
    """'100mbit', '1gbit', '500kbit' -> bits per second; 'none'/'0' -> None (uncapped)."""
    if text is None or text.strip().lower() in ("none", "0", ""):
        return None
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmg])bit", text.strip().lower())
    if not m:
        raise LabError(f"bad rate {text!r}: use a number with kbit, mbit or gbit (e.g. 100mbit), or none")
    bits = float(m.group(1)) * {"k": 1e3, "m": 1e6, "g": 1e9}[m.group(2)]
    if bits < 1e5:
        raise LabError(f"rate {text!r} is too low: at least 100kbit")
    return int(bits)


def cap(netns, dev, rate):
    """Shape what ``dev`` sends to ``rate`` bit/s with a token bucket (tbf), if capped."""
    if rate is None:
        return
    burst = max(64 * 1024, rate // 8 // 100)   # 10 ms worth of tokens, at least 64 KiB
    run("tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", f"{rate}bit",
        "burst", str(burst), "latency", "50ms", netns=netns)


def add_netns(name):
    run("ip", "netns", "add", name)
    run("ip", "link", "set", "lo", "up", netns=name)


def add_switch(name):
    add_netns(name)
    run("ip", "link", "add", "br0", "type", "bridge", netns=name)
    run("ip", "link", "set", "br0", "up", netns=name)


def connect(switch, port, netns, dev, rate=None):
    """A veth from ``dev`` in ``netns`` to bridge port ``port`` of ``switch``, capped both ways."""
    run("ip", "link", "add", dev, "netns", netns, "type", "veth", "peer", "name", port, "netns", switch)
    run("ip", "link", "set", port, "master", "br0", "up", netns=switch)
    run("ip", "link", "set", dev, "up", netns=netns)
    cap(switch, port, rate)
    cap(netns, dev, rate)


def set_address(netns, dev, addr, prefixlen=24):
    run("ip", "addr", "add", f"{addr}/{prefixlen}", "dev", dev, netns=netns)


def add_route(netns, dest, via):
    run("ip", "route", "add", str(dest), "via", str(via), netns=netns)


def build(prefix, number, rooms, uplink_rate, admin):
    """Core switch, router and one switch per room; the controller's admin port. Hosts come later."""
    core = f"{prefix}-core"
    add_switch(core)
    router = f"{prefix}-router"
    add_netns(router)
    run("sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward", netns=router)   # the router's own sysctl
    connect(core, "router", router, "core")
    set_address(router, "core", address(number, 0, 1))
    for room in range(1, rooms + 1):
        switch = f"{prefix}-room{room}"
        add_switch(switch)
        connect(switch, "uplink", router, f"room{room}", uplink_rate)
        set_address(router, f"room{room}", address(number, room, 1))
    # The controller's port: created in the core switch, its peer moved to the root namespace.
    run("ip", "link", "add", "admin", "netns", core, "type", "veth", "peer", "name", admin)
    run("ip", "link", "set", "admin", "master", "br0", "up", netns=core)
    set_address(None, admin, address(number, 0, 254))
    run("ip", "link", "set", admin, "up")
    add_route(None, lab_network(number), address(number, 0, 1))


def add_host(prefix, number, name, room, index, rate):
    """The host's namespace with eth0 on its room's switch (room 0: the core); returns its address."""
    netns = f"{prefix}-{name}"
    add_netns(netns)
    switch = f"{prefix}-room{room}" if room else f"{prefix}-core"
    connect(switch, name, netns, "eth0", rate)
    addr = address(number, room, index)
    set_address(netns, "eth0", addr)
    # Only the lab's own range is routable: a host has no default route, so nothing leaves.
    add_route(netns, lab_network(number), address(number, room, 1))
    return str(addr)


def link_down(netns):
    """A host powered off: its NIC goes dark. The switch port loses carrier and nothing in the
    host's namespace answers any more (no RST, no ping reply): the lab's peers see a terminal
    that is off, not one that refuses connections. The namespace, its veth and caps stay."""
    run("ip", "link", "set", "eth0", "down", netns=netns)


def link_up(netns, number, room):
    """The NIC powered again: up, and its route to the lab back (the kernel dropped it with the link)."""
    run("ip", "link", "set", "eth0", "up", netns=netns)
    run("ip", "route", "replace", str(lab_network(number)), "via", str(address(number, room, 1)), netns=netns)


def lab_namespaces(prefix):
    return [line.split()[0] for line in run("ip", "netns", "list").splitlines()
            if line.startswith(prefix + "-")]


def destroy(prefix, admin):
    """Delete the lab's namespaces (and with them every bridge, veth and qdisc inside)."""
    for netns in lab_namespaces(prefix):
        run("ip", "netns", "del", netns, check=False)
    if run("ip", "link", "show", "dev", admin, check=False):
        run("ip", "link", "del", admin, check=False)
