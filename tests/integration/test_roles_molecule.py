"""The roles' Molecule scenarios (extensions/molecule/tracker, .../swarm_client), each on a
lab of its own: create, converge, idempotence (a second converge changes nothing), verify
with pytest-testinfra, destroy."""
import os
import re
import subprocess
import sys

import pytest

from helpers import ROOT, needs_lab
from lab import lab as labmod

INSTALLED = os.path.expanduser("~/.ansible/collections/ansible_collections/p2pfleet/imaging")


@needs_lab
@pytest.mark.parametrize("scenario", ["tracker", "swarm_client"])
def test_role_scenario(scenario, lab, tmp_path):
    name = f"mol{scenario[:2]}{os.getpid() % 10000}"
    installed_before = os.path.exists(INSTALLED)
    # Molecule finds the collection through this path, as ansible-playbook does in the other tests
    collections = tmp_path / "ansible_collections" / "p2pfleet"
    collections.mkdir(parents=True)
    (collections / "imaging").symlink_to(ROOT)
    env = dict(os.environ, P2PFLEET_LAB=name, ANSIBLE_NOCOLOR="1", NO_COLOR="1", ANSIBLE_FORKS="10",
               ANSIBLE_COLLECTIONS_PATH=str(tmp_path),
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    try:
        proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "molecule"), "test", "-s", scenario],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    finally:
        if os.path.exists(os.path.join(labmod.LABS, name)):
            labmod.down(name)
            raise AssertionError(f"molecule left lab {name} up")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    for step in ("create", "converge", "idempotence", "verify", "destroy"):
        assert f"{step}: Executed: Successful" in output, step
    # testinfra's own summary line: its tests ran, and none failed
    summary = re.search(r"=+ (\d+ passed[^=]*) in [\d.]+s =+", output)
    assert summary and "failed" not in summary.group(1) and "error" not in summary.group(1), output[-3000:]
    assert os.path.exists(INSTALLED) == installed_before
