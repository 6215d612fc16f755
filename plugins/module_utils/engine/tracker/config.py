"""Load and validate the tracker's config file (YAML; JSON is valid YAML too).

Every error names the offending key as a dotted path, e.g. ``policy.origin_fanout``, so the
administrator (or the Ansible role that rendered the file) can fix it without guessing.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field

from ..errors import ConfigError
from ..files import read_yaml

_HEX = set("0123456789abcdef")


@dataclass(frozen=True)
class Topology:
    """Which group each peer belongs to and who the origin seeders are, by address alone.

    Host names in ``groups.*.hosts`` and ``policy.seeders`` are turned into the addresses
    ``hosts`` binds them to when the config is read, so the ``host=`` a peer announces never
    picks its group or makes it an origin (hostnames.py).
    """

    group_addresses: dict      # address -> group, for hosts listed by name
    group_networks: tuple      # (network, group), most specific network first
    seeder_addresses: frozenset
    seeder_networks: tuple
    fetch_from: dict           # group -> frozenset of groups it may fetch from
    other_group_peers: int
    origin_fanout: int
    bridges: int = 2           # per group; 0: no bridges (policy.py)
    group_bridges: dict = field(default_factory=dict)   # group -> its own number of bridges
    site_seeder_addresses: frozenset = frozenset()
    site_seeder_networks: tuple = ()
    stripes: bool = True       # hand each origin downloader its stripe (stripes.py)

    def group_of(self, ip):
        return _group_of(ip, self.group_addresses, self.group_networks)

    def is_seeder(self, ip):
        return ip in self.seeder_addresses or _in_any(ip, self.seeder_networks)

    def bridges_of(self, group):
        return self.group_bridges.get(group, self.bridges)

    def is_site_seeder(self, ip):
        """A seeder of its own group (``groups.*.seeders``): a site's cache host, say."""
        return ip in self.site_seeder_addresses or _in_any(ip, self.site_seeder_networks)


@dataclass(frozen=True)
class TrackerConfig:
    listen: tuple                       # (host, port) pairs
    allowed_networks: tuple
    topology: Topology
    interval: int = 30
    min_interval: int = 10
    expiry_intervals: int = 2
    forget_after: int = 3600
    default_numwant: int = 50
    max_numwant: int = 200
    manifest_dir: str | None = None
    manifest_rescan: int = 30
    info_hashes: tuple = ()
    admin_token: str | None = None
    admin_networks: tuple = ()
    hosts: dict = field(default_factory=dict)   # ip address -> host name (hostnames.py)
    log_level: str = "info"
    idle_timeout: int = 15
    max_connections: int | None = None          # None: as many as the descriptor limit allows

    def allows(self, ip) -> bool:
        return _in_any(ip, self.allowed_networks)

    def allows_admin(self, ip) -> bool:
        return _in_any(ip, self.admin_networks)


def _group_of(ip, group_addresses, group_networks):
    """The group listing ``ip``'s host by name, else the most specific network's group."""
    group = group_addresses.get(ip)
    if group is not None:
        return group
    return next((g for network, g in group_networks if ip.version == network.version and ip in network), None)


def _in_any(ip, networks):
    return any(ip.version == net.version and ip in net for net in networks)


_TOP_KEYS = {
    "listen", "allowed_networks", "interval", "min_interval", "expiry_intervals",
    "forget_after", "default_numwant", "max_numwant", "manifest_dir", "manifest_rescan",
    "info_hashes", "admin_token", "admin_networks", "hosts", "groups", "policy", "log_level",
    "idle_timeout", "max_connections",
}
# The admin endpoint changes what the tracker serves: by default only from the tracker
# host itself, where the Ansible role runs its admin calls.
DEFAULT_ADMIN_NETWORKS = ["127.0.0.0/8", "::1/128"]
_POLICY_KEYS = {"other_group_peers", "seeders", "origin_fanout", "fetch_from", "bridges", "stripes"}
# Keys that were renamed: refused with the new name rather than "unknown key".
_RENAMED = {"policy.seeder_slots": "policy.origin_fanout"}
_GROUP_KEYS = {"networks", "hosts", "seeders", "bridges"}
_LOG_LEVELS = ("debug", "info", "warning", "error")


MAX_CONFIG_BYTES = 1 << 20
DEFAULT_BRIDGES = 2


def load(path) -> TrackerConfig:
    """Read the config as bounded input: a regular file of at most 1 MiB, nested at most
    a few dozen levels; every problem is one ConfigError line."""
    raw = read_yaml(path, MAX_CONFIG_BYTES, "tracker config", error=ConfigError)
    return parse(raw, base_dir=os.path.dirname(os.path.abspath(path)))


def parse(raw, base_dir=".") -> TrackerConfig:
    if not isinstance(raw, dict):
        raise ConfigError("tracker config must be a mapping of keys to values")
    _no_unknown(raw, _TOP_KEYS, "")
    interval = _int(raw, "interval", 30, 1, 86400)
    max_numwant = _int(raw, "max_numwant", 200, 1, 10000)
    manifest_dir = raw.get("manifest_dir")
    if manifest_dir is not None:
        if not isinstance(manifest_dir, str) or not manifest_dir:
            raise ConfigError("manifest_dir: must be a directory path")
        manifest_dir = os.path.join(base_dir, manifest_dir)
    token = raw.get("admin_token")
    if token is not None and (not isinstance(token, str) or len(token) < 16):
        raise ConfigError("admin_token: must be a string of at least 16 characters")
    log_level = raw.get("log_level", "info")
    if log_level not in _LOG_LEVELS:
        raise ConfigError(f"log_level: must be one of {', '.join(_LOG_LEVELS)}, got {log_level!r}")
    if "allowed_networks" not in raw:
        raise ConfigError("allowed_networks: missing; list the CIDR networks peers may announce from")
    hosts = _hosts(raw)
    max_connections = raw.get("max_connections")
    if max_connections is not None:
        max_connections = _int(raw, "max_connections", None, 16, 1_000_000)
    return TrackerConfig(
        listen=_listen(raw.get("listen", "0.0.0.0:6969")),
        allowed_networks=_networks(raw["allowed_networks"], "allowed_networks"),
        topology=_topology(raw, hosts),
        interval=interval,
        min_interval=_int(raw, "min_interval", min(10, interval), 1, interval),
        expiry_intervals=_int(raw, "expiry_intervals", 2, 1, 100),
        forget_after=_int(raw, "forget_after", 3600, 0, 30 * 86400),
        default_numwant=_int(raw, "default_numwant", min(50, max_numwant), 0, max_numwant),
        max_numwant=max_numwant,
        manifest_dir=manifest_dir,
        manifest_rescan=_int(raw, "manifest_rescan", 30, 0, 86400),
        info_hashes=tuple(_info_hash(v, f"info_hashes[{i}]") for i, v in enumerate(_list(raw, "info_hashes"))),
        admin_token=token,
        admin_networks=_networks(raw.get("admin_networks", DEFAULT_ADMIN_NETWORKS), "admin_networks"),
        hosts=hosts,
        log_level=log_level,
        idle_timeout=_int(raw, "idle_timeout", 15, 1, 3600),
        max_connections=max_connections,
    )


def _hosts(raw):
    """address -> host name; two spellings of one address (fd00::1, FD00::1) are refused."""
    hosts = {}
    for text, name in _mapping(raw, "hosts").items():
        address = _ip(text, f"hosts.{text}")
        if address in hosts:
            raise ConfigError(f"hosts.{text}: {address} is given twice")
        hosts[address] = _name(name, f"hosts.{text}")
    return hosts


def _topology(raw, hosts) -> Topology:
    addresses = {}
    for address, name in hosts.items():
        addresses.setdefault(name, []).append(address)
    groups = _mapping(raw, "groups")
    group_addresses, group_networks = _group_members(groups, addresses)
    site_addresses, site_networks, group_bridges = _group_seeders(groups, addresses, group_networks,
                                                                  group_addresses)

    policy = _mapping(raw, "policy")
    _no_unknown(policy, _POLICY_KEYS, "policy.")
    seeder_addresses, seeder_networks = _policy_seeders(policy, addresses)
    fetch_from = _fetch_from(policy, groups)
    return Topology(
        group_addresses=group_addresses,
        group_networks=tuple(group_networks),
        seeder_addresses=frozenset(seeder_addresses),
        seeder_networks=tuple(seeder_networks),
        fetch_from=fetch_from,
        other_group_peers=_int(policy, "other_group_peers", 4, 0, 10000, "policy."),
        origin_fanout=_int(policy, "origin_fanout", 4, 1, 10000, "policy."),
        # Bridges only where there are rooms to bridge: with one group the origin's slots go to
        # any downloader (one room of 16: 106.2 s with none, 120.7 s with two bridges).
        bridges=_int(policy, "bridges", DEFAULT_BRIDGES if len(groups) > 1 else 0, 0, 1000, "policy."),
        group_bridges=group_bridges,
        site_seeder_addresses=frozenset(site_addresses),
        site_seeder_networks=tuple(site_networks),
        stripes=_bool(policy, "stripes", True, "policy."),
    )


def _group_members(groups, addresses):
    """``(address -> group, [(network, group)] most specific first)`` of ``groups``' hosts
    and networks; a host may be in one group only."""
    group_hosts, group_addresses, group_networks = {}, {}, []
    for group, spec in groups.items():
        where = f"groups.{group}"
        _name(group, where)
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}: must be a mapping with networks and/or hosts")
        _no_unknown(spec, _GROUP_KEYS, where + ".")
        for host in _list(spec, "hosts", where + "."):
            _name(host, f"{where}.hosts")
            if host in group_hosts:
                raise ConfigError(f"{where}.hosts: {host} is already in group {group_hosts[host]}")
            group_hosts[host] = group
            for address in _bound(addresses, host, f"{where}.hosts"):
                group_addresses[address] = group
        for network in _networks(spec.get("networks", []), f"{where}.networks"):
            group_networks.append((network, group))
    group_networks.sort(key=lambda pair: pair[0].prefixlen, reverse=True)
    return group_addresses, group_networks


def _group_seeders(groups, addresses, group_networks, group_addresses):
    """``(site seeder addresses, site seeder networks, group -> bridges)`` of all groups."""
    site_addresses, site_networks, group_bridges = set(), [], {}
    for group, spec in groups.items():
        if "bridges" in spec:
            group_bridges[group] = _int(spec, "bridges", DEFAULT_BRIDGES, 1, 1000, f"groups.{group}.")
        found = _site_seeders(spec, f"groups.{group}.seeders", addresses, group_networks, group_addresses, group)
        site_addresses.update(found[0])
        site_networks.extend(found[1])
    return site_addresses, site_networks, group_bridges


def _policy_seeders(policy, addresses):
    """``(addresses, networks)`` of the origins ``policy.seeders`` names."""
    seeder_addresses, seeder_networks = set(), []
    for entry in _list(policy, "seeders", "policy."):
        try:
            seeder_networks.append(ipaddress.ip_network(entry, strict=False))
        except (TypeError, ValueError):
            seeder_addresses.update(_bound(addresses, _name(entry, "policy.seeders"), "policy.seeders"))
    return seeder_addresses, seeder_networks


def _fetch_from(policy, groups):
    """group -> the groups its members may fetch from, as ``policy.fetch_from`` restricts them."""
    fetch_from = {}
    for group, sources in _mapping(policy, "fetch_from", "policy.").items():
        where = f"policy.fetch_from.{group}"
        if group not in groups:
            raise ConfigError(f"{where}: {group} is not a group defined under groups")
        if not isinstance(sources, list) or not sources:
            raise ConfigError(f"{where}: must be a non-empty list of group names")
        for source in sources:
            if source not in groups:
                raise ConfigError(f"{where}: {source!r} is not a group defined under groups")
        fetch_from[group] = frozenset(sources)
    return fetch_from


def _site_seeders(spec, where, addresses, group_networks, group_addresses, group):
    """A group's own seeders: host names bound under ``hosts``, addresses or networks, each
    inside the group (a seeder of a group it is not in would serve nobody there)."""
    found, networks = set(), []
    for entry in _list(spec, "seeders", where.rsplit(".", 1)[0] + "."):
        try:
            network = ipaddress.ip_network(entry, strict=False)
        except (TypeError, ValueError):
            network = None
        if network is None:
            members = _bound(addresses, _name(entry, where), where)
        elif network.num_addresses == 1:
            members = [network.network_address]
        else:
            inside = any(network.version == net.version and network.subnet_of(net) and g == group
                         for net, g in group_networks)
            if not inside:
                raise ConfigError(f"{where}: {entry} is not inside a network of group {group}")
            networks.append(network)
            continue
        for address in members:
            if _group_of(address, group_addresses, group_networks) != group:
                raise ConfigError(f"{where}: {entry} ({address}) is not in group {group}; "
                                  f"a group's seeders serve the group they are in")
            found.add(address)
    return found, networks


def _bound(addresses, name, where):
    """The addresses ``hosts`` binds ``name`` to; a name bound to none could be claimed by
    anyone's ``host=``, so it cannot place a peer in a group or make it an origin."""
    if name not in addresses:
        raise ConfigError(f"{where}: {name} is not bound to an address under hosts; a peer's group and "
                          f"origin role follow its address, so add ADDRESS: {name} to hosts or list its "
                          f"address or network here")
    return addresses[name]


def _no_unknown(mapping, known, prefix):
    for key in mapping:
        if f"{prefix}{key}" in _RENAMED:
            raise ConfigError(f"{prefix}{key}: renamed; use {_RENAMED[prefix + key]} instead")
        if key not in known:
            raise ConfigError(f"{prefix}{key}: unknown key; expected one of {', '.join(sorted(known))}")


def _int(mapping, key, default, low, high, prefix=""):
    value = mapping.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{prefix}{key}: must be an integer in {low}..{high}, got {value!r}")
    return value


def _bool(mapping, key, default, prefix=""):
    value = mapping.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{prefix}{key}: must be true or false, got {value!r}")
    return value


def _list(mapping, key, prefix=""):
    value = mapping.get(key) or []
    if not isinstance(value, list):
        raise ConfigError(f"{prefix}{key}: must be a list, got {type(value).__name__}")
    return value


def _mapping(mapping, key, prefix=""):
    value = mapping.get(key) or {}
    if not isinstance(value, dict):
        raise ConfigError(f"{prefix}{key}: must be a mapping, got {type(value).__name__}")
    return value


def _networks(value, where):
    if not isinstance(value, list):
        raise ConfigError(f"{where}: must be a list of CIDR networks")
    networks = []
    for entry in value:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: {entry!r} is not a CIDR network such as 10.1.0.0/16") from None
    return tuple(networks)


def _ip(value, where):
    try:
        return ipaddress.ip_address(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {value!r} is not an IP address") from None


def _name(value, where):
    if not isinstance(value, str) or not value or len(value) > 253 or any(c.isspace() for c in value):
        raise ConfigError(f"{where}: {value!r} is not a valid name")
    return value


def _info_hash(value, where):
    if not isinstance(value, str) or len(value) != 40 or not set(value.lower()) <= _HEX:
        raise ConfigError(f"{where}: {value!r} is not a 40-digit hex info-hash")
    return bytes.fromhex(value)


def _listen(value):
    entries = [value] if isinstance(value, str) else value
    if not isinstance(entries, list) or not entries:
        raise ConfigError("listen: must be HOST:PORT or a list of them")
    pairs = []
    for entry in entries:
        host, sep, port = str(entry).rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ConfigError(f"listen: {entry!r} is not HOST:PORT (use [::]:6969 for IPv6)")
        pairs.append((host, int(port)))
    return tuple(pairs)
