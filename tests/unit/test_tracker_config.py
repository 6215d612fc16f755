import ipaddress

import pytest

from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.tracker.config import ConfigError, load, parse

BASE = {"allowed_networks": ["10.0.0.0/8"]}


def with_(**extra):
    return {**BASE, **extra}


def test_full_example_config_loads(tmp_path):
    path = tmp_path / "tracker.yml"
    path.write_text("""
listen: ["0.0.0.0:6969", "[::]:6969"]
allowed_networks: [10.0.0.0/8, "fd00::/8"]
interval: 20
manifest_dir: manifests
admin_token: 0123456789abcdef0123
hosts: {10.1.0.5: pc-105, 10.9.0.1: laptop-7, 10.5.5.5: server-1}
groups:
  room1: {networks: [10.1.0.0/16], hosts: [laptop-7]}
  room1-front: {networks: [10.1.0.0/24]}
policy: {seeders: [server-1, 10.0.0.1], origin_fanout: 3, other_group_peers: 2,
         fetch_from: {room1-front: [room1]}}
""")
    cfg = load(path)
    assert cfg.listen == (("0.0.0.0", 6969), ("::", 6969))
    assert cfg.manifest_dir == str(tmp_path / "manifests")
    assert cfg.min_interval == 10 and cfg.expiry_intervals == 2
    ip = ipaddress.ip_address
    assert cfg.hosts[ip("10.1.0.5")] == "pc-105"
    topo = cfg.topology
    assert topo.group_of(ip("10.1.0.9")) == "room1-front"      # most specific network
    assert topo.group_of(ip("10.1.7.9")) == "room1"
    assert topo.group_of(ip("10.9.0.1")) == "room1"            # laptop-7, listed by name
    assert topo.group_of(ip("10.9.0.2")) is None
    assert topo.is_seeder(ip("10.0.0.1")) and topo.is_seeder(ip("10.5.5.5"))   # by address, by name
    assert not topo.is_seeder(ip("10.0.0.2"))
    assert cfg.allows(ip("10.200.0.1")) and cfg.allows(ip("fd00::1"))
    assert topo.bridges == 2 and not topo.is_site_seeder(ip("10.1.0.5"))


def test_one_group_or_none_has_no_bridges_by_default():
    one = parse({"allowed_networks": ["10.0.0.0/8"], "groups": {"room1": {"networks": ["10.1.0.0/24"]}}})
    assert one.topology.bridges == 0
    assert parse({"allowed_networks": ["10.0.0.0/8"]}).topology.bridges == 0
    asked = parse({"allowed_networks": ["10.0.0.0/8"], "groups": {"room1": {}}, "policy": {"bridges": 2}})
    assert asked.topology.bridges == 2


def test_a_group_names_its_own_seeders_by_name_address_or_network():
    cfg = parse({"allowed_networks": ["10.0.0.0/8"], "hosts": {"10.2.0.5": "cache-2"},
                 "groups": {"site2": {"networks": ["10.2.0.0/16"], "seeders": ["cache-2", "10.2.0.6", "10.2.9.0/24"]}},
                 "policy": {"bridges": 2}})
    ip = ipaddress.ip_address
    topo = cfg.topology
    assert topo.bridges == 2
    assert all(topo.is_site_seeder(ip(a)) for a in ("10.2.0.5", "10.2.0.6", "10.2.9.77"))
    assert not topo.is_site_seeder(ip("10.2.0.7"))
    assert not cfg.allows(ip("192.168.1.1")) and not cfg.allows(ip("::1"))


@pytest.mark.parametrize("raw, message", [
    ({}, "allowed_networks: missing"),
    (with_(allowed_networks=["10.0.0.0/33"]), "allowed_networks: '10.0.0.0/33' is not a CIDR network"),
    (with_(intervall=30), "intervall: unknown key"),
    (with_(interval=0), "interval: must be an integer in 1..86400, got 0"),
    (with_(interval="30"), "interval: must be an integer"),
    (with_(min_interval=60), "min_interval: must be an integer in 1..30"),
    (with_(listen="6969"), "listen: '6969' is not HOST:PORT"),
    (with_(admin_token="short"), "admin_token: must be a string of at least 16 characters"),
    (with_(hosts={"not-an-ip": "pc"}), "hosts.not-an-ip: 'not-an-ip' is not an IP address"),
    (with_(groups={"room1": ["10.0.0.0/8"]}), "groups.room1: must be a mapping"),
    (with_(groups={"room1": {"subnets": []}}), "groups.room1.subnets: unknown key"),
    (with_(hosts={"10.0.0.9": "pc"}, groups={"a": {"hosts": ["pc"]}, "b": {"hosts": ["pc"]}}),
     "groups.b.hosts: pc is already in group a"),
    (with_(hosts={"fd00::1": "a", "FD00::1": "b"}), "hosts.FD00::1: fd00::1 is given twice"),
    # A name nothing binds to an address would let any peer's host= pick a group or an origin.
    (with_(groups={"annex": {"hosts": ["laptop-7"]}}),
     "groups.annex.hosts: laptop-7 is not bound to an address under hosts"),
    (with_(hosts={"10.0.0.9": "pc-9"}, policy={"seeders": ["server"]}),
     "policy.seeders: server is not bound to an address under hosts"),
    (with_(policy={"origin_fanout": 0}), "policy.origin_fanout: must be an integer in 1..10000, got 0"),
    (with_(policy={"seeder_slots": 4}), "policy.seeder_slots: renamed; use policy.origin_fanout instead"),
    (with_(policy={"fetch_from": {"room9": ["room1"]}}), "policy.fetch_from.room9: room9 is not a group"),
    (with_(groups={"room1": {}}, policy={"fetch_from": {"room1": ["roomX"]}}),
     "policy.fetch_from.room1: 'roomX' is not a group"),
    (with_(info_hashes=["abc"]), "info_hashes[0]: 'abc' is not a 40-digit hex info-hash"),
    (with_(log_level="loud"), "log_level: must be one of"),
    (with_(admin_networks="127.0.0.1"), "admin_networks: must be a list of CIDR networks"),
    (with_(idle_timeout=0), "idle_timeout: must be an integer in 1..3600, got 0"),
    (with_(max_connections=8), "max_connections: must be an integer in 16..1000000, got 8"),
    (with_(policy={"bridges": -1}), "policy.bridges: must be an integer in 0..1000, got -1"),
    (with_(hosts={"10.2.0.9": "cache"}, groups={"site1": {"networks": ["10.1.0.0/24"], "seeders": ["cache"]}}),
     "groups.site1.seeders: cache (10.2.0.9) is not in group site1"),
    (with_(groups={"site1": {"networks": ["10.1.0.0/24"], "seeders": ["10.1.0.0/16"]}}),
     "groups.site1.seeders: 10.1.0.0/16 is not inside a network of group site1"),
    (with_(groups={"site1": {"seeders": "10.1.0.9"}}), "groups.site1.seeders: must be a list"),
    (with_(groups={"site1": {"bridges": 0}}), "groups.site1.bridges: must be an integer in 1..1000, got 0"),
    ([1, 2], "must be a mapping"),
])
def test_bad_config_names_the_key(raw, message):
    with pytest.raises(ConfigError) as excinfo:
        parse(raw)
    assert message in str(excinfo.value)


def test_admin_endpoint_defaults_to_loopback_only():
    ip = ipaddress.ip_address
    cfg = parse(BASE)
    assert cfg.allows_admin(ip("127.0.0.1")) and cfg.allows_admin(ip("::1"))
    assert not cfg.allows_admin(ip("10.1.2.3"))
    assert (cfg.idle_timeout, cfg.max_connections) == (15, None)
    cfg = parse(with_(admin_networks=["10.9.0.0/24"]))
    assert cfg.allows_admin(ip("10.9.0.7")) and not cfg.allows_admin(ip("127.0.0.1"))


def test_unreadable_and_invalid_yaml_files(tmp_path):
    with pytest.raises(ConfigError, match="missing.yml: no such tracker config"):
        load(tmp_path / "missing.yml")
    bad = tmp_path / "bad.yml"
    bad.write_text("groups: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yml: not valid YAML"):
        load(bad)


def test_documented_example_config_loads():
    import os
    example = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "examples", "tracker.yml")
    cfg = load(example)
    assert cfg.topology.fetch_from == {"annex": frozenset({"room101"})}
    assert cfg.topology.origin_fanout == 4


# -- the config file as bounded input (both daemons' loaders) -------------------------------------

def _tracker_load(path):
    return load(str(path))


def _agent_load(path):
    from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.agent.config import load as agent_load
    return agent_load(str(path))


def _deep_flow(tmp_path):
    path = tmp_path / "flow.yml"
    path.write_text("allowed_networks: " + "[" * 100_000 + "]" * 100_000 + "\n")
    return path


def _deep_block(tmp_path):
    path = tmp_path / "block.yml"
    path.write_text("".join(f"{' ' * i}k:\n" for i in range(1000)))
    return path


def _fifo(tmp_path):
    import os
    path = tmp_path / "fifo.yml"
    os.mkfifo(path)
    return path


def _huge(tmp_path):
    path = tmp_path / "huge.yml"
    path.write_text("# " + "x" * (2 << 20) + "\n")
    return path


@pytest.mark.parametrize("loader", [_tracker_load, _agent_load], ids=["tracker", "agent"])
@pytest.mark.parametrize("make, words", [
    (_deep_flow, "nested deeper than"),
    (_deep_block, "nested deeper than"),
    (_fifo, "not a regular file"),
    (lambda tmp_path: "/dev/zero", "not a regular file"),
    (lambda tmp_path: tmp_path, "not a regular file"),
    (_huge, "too large"),
    (lambda tmp_path: tmp_path / "absent.yml", "no such"),
], ids=["deep-flow", "deep-block", "fifo", "char-device", "directory", "huge", "missing"])
def test_a_config_file_is_read_as_bounded_input(tmp_path, loader, make, words):
    path = make(tmp_path)
    with pytest.raises(ConfigError if loader is _tracker_load else Exception) as err:
        loader(path)
    from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.errors import P2PFleetError
    assert isinstance(err.value, P2PFleetError), repr(err.value)
    message = str(err.value)
    assert words in message and str(path) in message and "\n" not in message, message


def test_a_config_nested_within_the_bound_still_loads(tmp_path):
    path = tmp_path / "ok.yml"
    path.write_text("allowed_networks: [10.0.0.0/8]\ngroups:\n  room1:\n    networks: [10.1.0.0/16]\n")
    assert load(str(path)).topology.group_of(ipaddress.ip_address("10.1.2.3")) == "room1"
