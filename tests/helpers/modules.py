"""Running the collection's modules for real: ``ansible`` ad-hoc calls on localhost.

The collection is found through a temporary ``ansible_collections/p2pfleet/imaging`` link
to the checkout; modules run under the system Python, as on a host that has no virtualenv.
"""
import json
import os
import subprocess
import sys

from . import ROOT

ANSIBLE = os.path.join(os.path.dirname(sys.executable), "ansible")
HOST_PYTHON = "/usr/bin/python3"


def collections_path(tmp_root):
    link_dir = tmp_root / "ansible_collections" / "p2pfleet"
    link_dir.mkdir(parents=True, exist_ok=True)
    link = link_dir / "imaging"
    if not link.exists():
        link.symlink_to(ROOT)
    return str(tmp_root)


def run_module(collections, name, args, check=False, diff=False, timeout=300):
    """One module call; its result dict, with ``failed`` and ``msg`` on failure."""
    cmd = [ANSIBLE, "localhost", "-c", "local", "-e", f"ansible_python_interpreter={HOST_PYTHON}",
           "-m", f"p2pfleet.imaging.{name}", "-a", json.dumps(args)]
    if check:
        cmd.append("--check")
    if diff:
        cmd.append("--diff")
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=collections, ANSIBLE_HOST_KEY_CHECKING="False",
               ANSIBLE_DEPRECATION_WARNINGS="False", ANSIBLE_LOCALHOST_WARNING="False",
               ANSIBLE_INVENTORY_UNPARSED_WARNING="False", ANSIBLE_NOCOLOR="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    out = proc.stdout
    start = out.find("=> {")
    if start < 0:
        raise AssertionError(f"no module result from {name}:\n{out}\n{proc.stderr}")
    result, _end = json.JSONDecoder().raw_decode(out[start + 3:])
    result.setdefault("failed", proc.returncode != 0)
    return result
