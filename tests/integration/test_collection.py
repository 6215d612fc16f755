"""The collection as Ansible sees it: it builds, and the engine imports from inside it."""
import ast
import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from helpers.build import GALAXY, build_tarball, install_tarball
from helpers import ROOT

ENGINE = os.path.join(ROOT, "plugins", "module_utils", "engine")


def engine_sources():
    for base, _, files in os.walk(ENGINE):
        for name in files:
            if name.endswith(".py"):
                yield os.path.join(base, name)


def test_engine_never_imports_ansible():
    offenders = []
    for path in engine_sources():
        tree = ast.parse(open(path, encoding="utf-8").read(), path)
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [f"{os.path.relpath(path, ROOT)}: {n}" for n in names if n.split(".")[0] == "ansible"]
    assert not offenders, "the engine must stay free of ansible imports:\n" + "\n".join(offenders)


@pytest.fixture(scope="module")
def installed_collection(tmp_path_factory):
    if not os.path.exists(GALAXY):
        pytest.skip("ansible-galaxy is not installed in this environment")
    tarball = build_tarball(tmp_path_factory.mktemp("build"), ROOT)
    dest = tmp_path_factory.mktemp("collections")
    install_tarball(tarball, dest)
    yield dest
    shutil.rmtree(dest, ignore_errors=True)


def test_collection_builds_and_engine_imports_under_its_namespace(installed_collection):
    # AnsiballZ imports module_utils as ansible_collections.<ns>.<name>.plugins.module_utils.*:
    # the engine's relative imports must work there exactly as they do from bin/p2pfleet.
    code = ("import ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.session as s, "
            "ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.torrents as t, "
            "ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.metainfo as m; "
            "print(m.choose_piece_size(256 << 30), t.lan_settings(s.SessionSettings('127.0.0.1:0'))['enable_dht'])")
    proc = subprocess.run([sys.executable, "-c", code], cwd=str(installed_collection),
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(installed_collection)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(4 << 20), "False"]


def test_collection_tarball_carries_no_local_state(installed_collection):
    root = installed_collection / "ansible_collections" / "p2pfleet" / "imaging"
    assert (root / "plugins" / "module_utils" / "engine" / "session.py").exists()
    assert (root / "plugins" / "module_utils" / "engine" / "agent" / "server.py").exists()
    assert (root / "plugins" / "module_utils" / "_agent_client.py").exists()
    assert (root / "meta" / "runtime.yml").exists()
    assert not (root / ".venv").exists(), "the virtualenv must not be packed into the collection"


MODULES = sorted(name[:-3] for name in os.listdir(os.path.join(ROOT, "plugins", "modules"))
                 if name.endswith(".py") and not name.startswith("_"))


@pytest.mark.parametrize("module", MODULES)
def test_every_module_documents_itself_for_ansible_doc(installed_collection, module):
    doc = shutil.which("ansible-doc", path=os.path.dirname(sys.executable))
    proc = subprocess.run([doc, "--json", f"p2pfleet.imaging.{module}"], capture_output=True, text=True,
                          env={**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(installed_collection)})
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)[f"p2pfleet.imaging.{module}"]
    assert data["doc"]["short_description"] and data["doc"]["options"] is not None
    assert set(data["doc"]["attributes"]) >= {"check_mode", "diff_mode", "idempotent"}
    assert data["return"], f"{module} documents no return values"
    examples = yaml.safe_load(data["examples"])
    assert examples and any(f"p2pfleet.imaging.{module}" in task for task in examples), \
        f"{module}'s examples never use it"


ROLES = sorted(name for name in os.listdir(os.path.join(ROOT, "roles"))
               if os.path.isdir(os.path.join(ROOT, "roles", name, "tasks")))


def test_the_tracker_and_swarm_client_roles_exist():
    assert {"engine", "tracker", "swarm_client"} <= set(ROLES)


@pytest.mark.parametrize("role", ROLES)
def test_every_role_documents_every_default_for_ansible_doc(installed_collection, role):
    doc = shutil.which("ansible-doc", path=os.path.dirname(sys.executable))
    proc = subprocess.run([doc, "--json", "-t", "role", f"p2pfleet.imaging.{role}"], capture_output=True, text=True,
                          env={**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(installed_collection)})
    assert proc.returncode == 0, proc.stderr
    spec = json.loads(proc.stdout)[f"p2pfleet.imaging.{role}"]["entry_points"]["main"]
    assert spec["short_description"] and spec["description"]
    with open(os.path.join(ROOT, "roles", role, "defaults", "main.yml")) as f:
        defaults = yaml.safe_load(f)
    # every variable an admin may set is documented, and nothing documented is missing
    assert set(spec["options"]) == set(defaults), set(spec["options"]) ^ set(defaults)
    for name, option in spec["options"].items():
        assert name.startswith(f"{role}_"), f"{name}: role variables carry the role's name"
        assert option.get("description") and option.get("type"), name
