"""Quality gates on the collection: `ansible-test sanity` on the published tarball under the
oldest and newest ansible-core that meta/runtime.yml admits, and `ansible-lint --profile
production` on the checkout.

ansible-test sanity runs on what a user installs: the tarball ``ansible-galaxy collection
build`` makes (galaxy.yml's ``build_ignore`` keeps the pytest suite, the virtual lab, the
benchmarks and local state out of it), installed by ``ansible-galaxy collection install``.
There are no ignore files: Automation Hub certification accepts only a short allow-list of
ignores, and galaxy-importer warns about any.

``requires_ansible: >=2.19.0`` is checked at both ends: under the ansible-core this suite runs
(the lowest admitted, and the one the lab tests play with) and under the newest release,
installed in a virtualenv of its own (SANITY_CORES), whose Python (3.12 or later) is looked
up on the machine. The releases in between are not run: each costs about half a minute once
its sanity virtualenvs are built (a few minutes the first time on a machine).

ansible-lint sees the whole checkout (playbooks resolve the collection's own modules and roles
in a copy under ansible_collections/p2pfleet/imaging/); what it leaves out is declared in
``.ansible-lint``, and there is no ``.ansible-lint-ignore``.
"""
import fcntl
import glob
import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest
import yaml

from helpers.build import (
    BIN, build_tarball, cache_root, checkout_files, copy_collection, gate_env, gates_home, install_tarball, run_gate,
)
from helpers import ROOT

ANSIBLE_TEST = os.path.join(BIN, "ansible-test")
ANSIBLE_LINT = os.path.join(BIN, "ansible-lint")
try:
    from ansible.release import __version__ as SUITE_CORE
except ImportError:  # the gates are skipped below
    SUITE_CORE = "none"

# ansible-core releases whose ansible-test checks the tarball besides this suite's own, each
# with the oldest Python its controller runs on.
SANITY_CORES = {"2.21.5": (3, 12)}

# ansible-test bootstraps pip in each sanity virtualenv with a get-pip.py it downloads from
# ci-files.testing.ansible.com, a host this workplace cannot reach, unless the file is in its
# cache. This stand-in there does the same job with the interpreter's own pip (ensurepip) and
# PyPI: it installs the pip it is asked for, and setuptools and wheel only when asked.
GET_PIP_STAND_IN = textwrap.dedent('''\
    """Stand-in for ansible-test's get-pip.py (written by tests/integration/test_quality_gates.py)."""
    import subprocess
    import sys

    args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
    subprocess.check_call([sys.executable, "-m", "ensurepip", "--upgrade", "--default-pip"])
    subprocess.check_call([sys.executable, "-m", "pip", "install", *args])
    if "--no-setuptools" in sys.argv[1:]:  # ensurepip brings setuptools on Python < 3.12
        subprocess.check_call([sys.executable, "-m", "pip", "uninstall", "--yes", "--quiet", "setuptools"])
    ''')

pytestmark = pytest.mark.skipif(not (os.path.exists(ANSIBLE_TEST) and os.path.exists(ANSIBLE_LINT)),
                                reason="ansible-test and ansible-lint come with requirements-test.txt (make venv)")


def pip_bootstrap_version(python):
    """The pip version the ansible-test of ``python`` bootstraps, which names its cached get-pip file."""
    source = subprocess.run([python, "-c", "import ansible_test, os; print(os.path.dirname(ansible_test.__file__))"],
                            capture_output=True, text=True, check=True).stdout.strip()
    source = os.path.join(source, "_internal", "python_requirements.py")
    with open(source, encoding="utf-8") as f:
        match = re.search(r"""default_packages = dict\(\s*pip=['"]([0-9.]+)['"]""", f.read())
    assert match, f"cannot find the pip version ansible-test bootstraps in {source}"
    return match.group(1)


def provide_get_pip(home, python):
    cache = os.path.join(home, ".ansible", "test", "cache")
    os.makedirs(cache, exist_ok=True)
    path = os.path.join(cache, "get_pip_%s.py" % pip_bootstrap_version(python).replace(".", "_"))
    current = None
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            current = f.read()
    if current != GET_PIP_STAND_IN:
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            f.write(GET_PIP_STAND_IN)
        os.replace(path + ".tmp", path)


def interpreter_identity(python):
    """What the virtualenvs made from ``python`` depend on: its base interpreter and exact version."""
    code = "import os, sys; print(os.path.realpath(sys._base_executable)); print(sys.version)"
    base, version = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n", 1)
    return base, version.rstrip("\n")


def python_version(python):
    proc = subprocess.run([python, "-c", "import sys, venv, ensurepip; print('%d.%d' % sys.version_info[:2])"],
                          capture_output=True, text=True, check=False)
    return tuple(int(n) for n in proc.stdout.split(".")) if proc.returncode == 0 else None


def python_at_least(minimum):
    """A Python with venv of at least ``minimum`` on this machine (PATH, pyenv's versions), or None."""
    pyenv = os.environ.get("PYENV_ROOT") or os.path.join(os.path.expanduser("~"), ".pyenv")
    candidates = [shutil.which(f"python3.{minor}") for minor in range(minimum[1], minimum[1] + 4)]
    candidates += sorted(glob.glob(os.path.join(pyenv, "versions", "3.*", "bin", "python3")))
    for python in filter(None, candidates):
        version = python_version(python)  # a pyenv shim of a version not selected fails here
        if version and version >= minimum:
            return os.path.realpath(python)
    return None


def core_virtualenv(version, minimum_python):
    """A virtualenv with ansible-core ``version``, kept between runs; its bin/ directory."""
    python = python_at_least(minimum_python)
    if python is None:
        pytest.fail(f"ansible-core {version} needs Python {'.'.join(map(str, minimum_python))} or later "
                    "for its controller, and this machine has none (on PATH or in pyenv)")
    venv = os.path.join(cache_root(), f"ansible-core-{version}-py{'.'.join(map(str, python_version(python)))}")
    os.makedirs(cache_root(), exist_ok=True)
    with open(venv + ".lock", "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(os.path.join(venv, ".installed")):
            shutil.rmtree(venv, ignore_errors=True)
            subprocess.run([python, "-m", "venv", venv], check=True)
            proc = subprocess.run([os.path.join(venv, "bin", "python"), "-m", "pip", "install", "--quiet",
                                   "--disable-pip-version-check", f"ansible-core=={version}"],
                                  capture_output=True, text=True, check=False)
            assert proc.returncode == 0, f"cannot install ansible-core {version}:\n{proc.stdout}\n{proc.stderr}"
            open(os.path.join(venv, ".installed"), "w", encoding="utf-8").close()
    return os.path.join(venv, "bin")


def requires_ansible():
    with open(os.path.join(ROOT, "meta", "runtime.yml"), encoding="utf-8") as f:
        return yaml.safe_load(f)["requires_ansible"]


@pytest.fixture(scope="module")
def files():
    return checkout_files()


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """The tarball, installed as ``ansible-galaxy collection install`` does: (top, collection dir)."""
    tarball = build_tarball(tmp_path_factory.mktemp("build"), ROOT)
    top = tmp_path_factory.mktemp("published")
    return str(top), install_tarball(tarball, top)


def test_requires_ansible_starts_at_the_core_these_tests_run():
    lowest = ".".join(SUITE_CORE.split(".")[:2])
    assert requires_ansible() == f">={lowest}.0", (
        f"meta/runtime.yml admits {requires_ansible()}; sanity runs under {SUITE_CORE} and {', '.join(SANITY_CORES)}")


@pytest.mark.timeout(900)
@pytest.mark.parametrize("core", [SUITE_CORE] + list(SANITY_CORES))
def test_ansible_test_sanity_on_the_published_tarball(published, core):
    top, collection = published
    if core == SUITE_CORE:
        version, bin_dir, python = core, BIN, sys.executable
    else:
        version = core
        bin_dir = core_virtualenv(core, SANITY_CORES[core])
        python = os.path.join(bin_dir, "python")
    assert not glob.glob(os.path.join(collection, "tests", "sanity", "ignore-*.txt")), "the tarball carries ignore files"
    home = gates_home(*interpreter_identity(python), version)
    argv = [os.path.join(bin_dir, "ansible-test"), "sanity", "--local", "--python",
            "%d.%d" % python_version(python), "--color", "no"]
    # One run at a time builds or uses the virtualenvs kept in this HOME.
    with open(os.path.join(home, ".lock"), "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        provide_get_pip(home, python)
        proc = run_gate(argv, collection, gate_env(home, top, bin_dir), timeout=840)
    # stdout has the findings (ERROR: path:line:col: ...) among pip's output; stderr the verdict.
    findings = "\n".join(line for line in proc.stdout.splitlines() if line.startswith(("ERROR:", "WARNING:")))
    assert proc.returncode == 0, (
        f"ansible-test sanity (ansible-core {version}) found problems (rc {proc.returncode}):\n{findings}\n"
        f"{proc.stderr}\n--- the end of its output ---\n{proc.stdout[-3000:]}")


@pytest.mark.timeout(600)
def test_ansible_lint_production_profile(files, tmp_path):
    with open(os.path.join(ROOT, ".ansible-lint-ignore"), encoding="utf-8") as f:
        unexplained = [line for line in f.read().splitlines() if line.strip() and not line.startswith("#") and "  # " not in line]
    assert not unexplained, f".ansible-lint-ignore entries without their reason: {unexplained}"
    tree = copy_collection(files, str(tmp_path))
    home = gates_home(*interpreter_identity(sys.executable), SUITE_CORE)
    # --offline: the collection has no dependencies to install, and is found in the copy.
    argv = [ANSIBLE_LINT, "--offline", "--profile", "production", "--nocolor", "--format", "pep8"]
    proc = run_gate(argv, tree, gate_env(home, str(tmp_path)), timeout=540)
    assert proc.returncode == 0, f"ansible-lint found problems (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
