"""`p2pfleet agent|tracker --check`: what the roles run on every config they render."""
import json
import os
import subprocess
import sys

import pytest
import yaml

from helpers import ROOT, run_cli

EXAMPLE = os.path.join(ROOT, "docs", "examples", "tracker.yml")


@pytest.mark.parametrize("daemon,good", [
    ("agent", 'listen: "0.0.0.0:6881"\ntrackers: ["http://10.0.0.1:6969/announce"]\n'),
    ("tracker", open(EXAMPLE).read()),
])
def test_check_accepts_a_good_config_and_refuses_a_bad_one_with_its_key(daemon, good, tmp_path):
    config = tmp_path / f"{daemon}.yml"
    config.write_text(good)
    ok = run_cli(daemon, "--check", "--config", config)
    assert ok.returncode == 0 and ok.stdout.strip() == f"{config}: config OK", ok.stderr
    config.write_text(good + "log_level: loud\n")
    bad = run_cli(daemon, "--check", "--config", config)
    assert bad.returncode == 1
    assert "log_level" in bad.stderr and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr


@pytest.mark.parametrize("host_vars, slots", [
    ({}, None),  # a seeder: no slots, no guard
    ({"p2pfleet_slots": [{"name": "A", "partlabel": "system_a", "boot_entry": "A"},
                         {"name": "B", "partlabel": "system_b", "boot_entry": "B"}],
      "p2pfleet_boot": {"backend": "grub", "grubenv": "/boot/grub/grubenv"}}, ["A", "B"]),
])
def test_the_roles_agent_config_carries_the_inventorys_slots_and_passes_the_check(tmp_path, host_vars, slots):
    """roles/swarm_client/templates/agent.yml.j2, rendered by ansible with the role's defaults."""
    with open(os.path.join(ROOT, "roles", "swarm_client", "defaults", "main.yml")) as f:
        variables = yaml.safe_load(f)
    variables.update(host_vars, swarm_client_announce=["http://10.0.0.1:6969/announce"],
                     swarm_client_networks=["10.0.0.0/24"])
    (tmp_path / "vars.json").write_text(json.dumps(variables))
    config = tmp_path / "agent.yml"
    template = os.path.join(ROOT, "roles", "swarm_client", "templates", "agent.yml.j2")
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible"), "localhost", "-c", "local",
                           "-m", "ansible.builtin.template", "-a", f"src={template} dest={config}",
                           "-e", f"@{tmp_path / 'vars.json'}"],
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, ANSIBLE_LOCALHOST_WARNING="False", ANSIBLE_NOCOLOR="1",
                                   ANSIBLE_INVENTORY_UNPARSED_WARNING="False"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rendered = yaml.safe_load(config.read_text())
    assert [s["name"] for s in rendered.get("slots", [])] == (slots or [])
    assert rendered.get("boot") == host_vars.get("p2pfleet_boot")
    ok = run_cli("agent", "--check", "--config", config)
    assert ok.returncode == 0, ok.stderr
