"""What the tracker role promises on the server (Molecule's verify step, pytest-testinfra
over the lab's SSH). Only the tracker group's host is checked."""
import json

import pytest
import yaml

testinfra_hosts = ["server"]


@pytest.fixture
def config(host):
    return yaml.safe_load(host.file("/etc/p2pfleet/tracker.yml").content_string)


def test_the_tracker_runs_and_starts_at_boot(host):
    service = host.service("p2pfleet-tracker")
    assert service.is_running and service.is_enabled


def test_its_config_is_root_only_and_holds_the_admin_token(host, config):
    file = host.file("/etc/p2pfleet/tracker.yml")
    assert (file.user, file.mode) == ("root", 0o600)
    assert config["admin_token"] == "molecule-admin-token-0123456789"


def test_its_config_comes_from_the_inventory(config):
    # the server and both terminals, each as its own address; room1 from the terminals' p2pfleet_room
    assert len(config["allowed_networks"]) == 3
    assert sorted(config["groups"]) == ["room1"]
    assert sorted(config["groups"]["room1"]["hosts"]) == ["t01", "t02"]
    assert "server" in config["policy"]["seeders"]
    assert sorted(config["hosts"].values()) == ["server", "t01", "t02"]


def test_it_answers_and_listens_only_where_the_config_says(host):
    status = json.loads(host.check_output(
        "/usr/bin/python3 -c %s",
        "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:6969/status.json').read().decode())"))
    assert "torrents" in status
    pid = host.check_output("systemctl show --property=MainPID --value p2pfleet-tracker")
    sockets = [line.split()[3] for line in host.check_output("ss -H -ltnp").splitlines() if f"pid={pid}," in line]
    assert sockets == ["0.0.0.0:6969"]
