"""The virtual lab's pure parts: the boot rule, argument parsing, room split, inventory shape."""
import shutil
import subprocess

import pytest
import yaml

from lab import inventory, lab, net
from lab.disk import parse_size
from lab.firmware import choose_entry, read_env
from lab.sh import LabError


@pytest.mark.parametrize("env, chosen", [
    ({}, ("A", False)),                                          # empty or missing environment
    ({"saved_entry": "A"}, ("A", False)),
    ({"saved_entry": "B"}, ("B", False)),
    ({"saved_entry": "A", "next_entry": "B"}, ("B", True)),        # one shot, cleared before booting
    ({"saved_entry": "B", "next_entry": "A"}, ("A", True)),
    ({"saved_entry": "B", "next_entry": ""}, ("B", False)),        # GRUB leaves next_entry= empty
    ({"saved_entry": "1"}, ("B", False)),                          # entries by position
    ({"saved_entry": "Debian"}, ("A", False)),                     # unknown entry: the first one
    ({"next_entry": "nonsense", "saved_entry": "B"}, ("A", True)),
])
def test_boot_rule(env, chosen):
    assert choose_entry(env) == chosen


@pytest.mark.skipif(not shutil.which("grub-editenv"), reason="grub-editenv (grub-common) is not installed")
def test_boot_rule_reads_a_real_grub_environment(tmp_path):
    env = str(tmp_path / "grubenv")
    assert read_env(env) == {}                                     # missing file: boots A
    subprocess.run(["grub-editenv", env, "create"], check=True)
    subprocess.run(["grub-editenv", env, "set", "saved_entry=A", "next_entry=B"], check=True)
    assert choose_entry(read_env(env)) == ("B", True)
    (tmp_path / "grubenv").write_bytes(b"garbage")                 # unreadable block: boots A
    assert choose_entry(read_env(env)) == ("A", False)


@pytest.mark.parametrize("text, bits", [("100mbit", 100_000_000), ("1gbit", 10**9), ("1.5Gbit", 1_500_000_000),
                                        ("500kbit", 500_000), (None, None), ("none", None), ("0", None)])
def test_parse_rate(text, bits):
    assert net.parse_rate(text) == bits


@pytest.mark.parametrize("text", ["100", "100mb", "fast", "10kbit", "-1mbit"])
def test_parse_rate_refuses(text):
    with pytest.raises(LabError):
        net.parse_rate(text)


def test_parse_size():
    assert parse_size("1G") == 1 << 30 and parse_size("768M") == 768 << 20 and parse_size("2GiB") == 2 << 30
    with pytest.raises(LabError, match="bad size"):
        parse_size("1T")


def test_addresses_per_lab_and_room():
    assert str(net.lab_network(3)) == "10.213.48.0/20"
    assert str(net.address(3, 0, 10)) == "10.213.48.10"           # the server, on the core network
    assert str(net.address(3, 2, 11)) == "10.213.50.11"           # first terminal of room 2
    assert all(net.lab_network(n).subnet_of(net.LAB_RANGE) for n in range(net.MAX_LABS))


def test_rooms_split_terminals_evenly_in_order():
    names = lab.terminal_names(5)
    assert names == ["t01", "t02", "t03", "t04", "t05"]
    assert list(lab.rooms_of(names, 2).values()) == [1, 1, 1, 2, 2]
    assert lab.terminal_names(120)[-1] == "t120"


def test_inventory_yaml_is_what_ansible_reads():
    state = {"name": "x", "key": "/k", "hosts": {
        "server": {"role": "server", "room": 0, "address": "10.213.0.10"},
        "t01": {"role": "terminal", "room": 1, "address": "10.213.1.11"},
        "t02": {"role": "terminal", "room": 2, "address": "10.213.2.11"}}}
    data = inventory.data(state, "/wheels")
    assert yaml.safe_load(inventory.to_yaml(data)) == data
    groups = data["all"]["children"]
    assert set(groups) == {"tracker", "seeders", "terminals", "room1", "room2"}
    assert groups["terminals"]["hosts"]["t02"]["p2pfleet_slots"][1] == \
        {"name": "B", "partlabel": "system_b", "boot_entry": "B"}
