"""The Molecule skeleton the roles' scenarios copy runs end to end on a lab of its own."""
import os
import subprocess
import sys

from helpers import ROOT, needs_lab
from lab import lab as labmod


INSTALLED = os.path.expanduser("~/.ansible/collections/ansible_collections/p2pfleet/imaging")


@needs_lab
def test_molecule_default_scenario_creates_and_destroys_a_lab(lab):
    name = f"mol{os.getpid()}"
    installed_before = os.path.exists(INSTALLED)
    env = dict(os.environ, P2PFLEET_LAB=name, ANSIBLE_NOCOLOR="1", NO_COLOR="1",
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    try:
        proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "molecule"), "test"], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=280)
    finally:
        if os.path.exists(os.path.join(labmod.LABS, name)):
            labmod.down(name)
            raise AssertionError(f"molecule left lab {name} up")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    for step in ("create", "converge", "idempotence", "verify", "destroy"):
        assert f"{step}: Executed: Successful" in proc.stdout + proc.stderr, step
    # without `prerun: false` Molecule installs the collection for the user, shadowing later installs
    assert os.path.exists(INSTALLED) == installed_before
