"""Quality gates on the collection: `ansible-test sanity` and `ansible-lint --profile production`.

Both tools need the collection at ``.../ansible_collections/p2pfleet/imaging/``, so each test
runs on a copy of the checkout made there: the files git lists (tracked, and untracked ones
that are not ignored), as they are in the work tree.

ansible-test sanity sees the collection's content. The developer tooling around it stays out
of its copy, because ansible-test's rules for collection code (module_utils' oldest Python, no
``print``, no ``_`` as a name, ``#!/usr/bin/env python`` only) are not rules for it: the pytest
suite (``tests/`` except ``tests/sanity/``), the virtual lab (``lab/``, ``bin/p2pfleet-lab``)
and the benchmarks. The few ignores left, each with its reason, are in
tests/sanity/ignore-2.19.txt.

ansible-lint sees the whole copy; what it leaves out is declared in ``.ansible-lint``.

Neither tool touches the user's ~/.ansible: both run with a HOME of their own under
~/.cache/p2pfleet-quality-gates/, where ansible-test keeps its per-test virtualenvs between
runs and checkouts (the first run on a machine builds them from PyPI, a few minutes; later
runs take about a minute).
"""
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT

BIN = os.path.dirname(sys.executable)
ANSIBLE_TEST = os.path.join(BIN, "ansible-test")
ANSIBLE_LINT = os.path.join(BIN, "ansible-lint")
PYTHON_VERSION = "%d.%d" % sys.version_info[:2]

NOT_COLLECTION_CONTENT = ("tests/", "lab/", "benchmarks/", "bin/p2pfleet-lab")
COLLECTION_TESTS = ("tests/sanity/",)
# What a checkout without git (an unpacked archive) must not carry into the copies.
LOCAL_STATE = {".git", ".venv", ".ansible", ".pytest_cache", ".hypothesis", "__pycache__"}

# ansible-test bootstraps pip in each sanity virtualenv with a get-pip.py it downloads from
# ci-files.testing.ansible.com, a host this workplace cannot reach, unless the file is in its
# cache. This stand-in there does the same job with the interpreter's own pip (ensurepip) and
# PyPI: it installs the pip it is asked for, and setuptools and wheel only when asked.
GET_PIP_STAND_IN = textwrap.dedent('''\
    """Stand-in for ansible-test's get-pip.py (written by tests/unit/test_quality_gates.py)."""
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


def gates_home():
    """The tools' HOME: one per base interpreter and ansible-core, since the sanity
    virtualenvs kept there are made from the one and hold what the other pins."""
    from ansible.release import __version__ as ansible_version
    key = "\0".join((os.path.realpath(sys._base_executable), sys.version, ansible_version))
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    home = os.path.join(cache, "p2pfleet-quality-gates", hashlib.sha256(key.encode()).hexdigest()[:12])
    os.makedirs(home, exist_ok=True)
    return home


def checkout_files():
    """Relative paths of the work tree's files as git sees them (all files, without git)."""
    proc = subprocess.run(["git", "-C", ROOT, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                          capture_output=True, check=False)
    if proc.returncode == 0:
        paths = [p for p in proc.stdout.decode("utf-8", "surrogateescape").split("\0") if p]
        return [p for p in paths if os.path.lexists(os.path.join(ROOT, p))]  # not deleted in the tree
    paths = []
    for base, dirs, names in os.walk(ROOT):
        rel = os.path.relpath(base, ROOT)
        dirs[:] = [d for d in dirs if d not in LOCAL_STATE and os.path.normpath(os.path.join(rel, d)) != "tests/output"]
        paths += [os.path.normpath(os.path.join(rel, n)) for n in names if not n.endswith(".pyc")]
    return paths


def is_collection_content(path):
    return path.startswith(COLLECTION_TESTS) or not path.startswith(NOT_COLLECTION_CONTENT)


def copy_collection(paths, top):
    """Copy ``paths`` (modes and symlinks kept) to top/ansible_collections/p2pfleet/imaging."""
    dest = os.path.join(top, "ansible_collections", "p2pfleet", "imaging")
    for rel in paths:
        src, dst = os.path.join(ROOT, rel), os.path.join(dest, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if os.path.islink(src):
            os.symlink(os.readlink(src), dst)
        else:
            shutil.copy2(src, dst)
    return dest


def gate_env(home, collections_top):
    """The tools' environment: their own HOME, no inherited ANSIBLE_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    user_home = os.path.expanduser("~")
    # pip keeps reading the user's configuration and download cache.
    env.setdefault("XDG_CONFIG_HOME", os.path.join(user_home, ".config"))
    env.setdefault("XDG_CACHE_HOME", os.path.join(user_home, ".cache"))
    env.update(HOME=home, ANSIBLE_COLLECTIONS_PATH=collections_top, NO_COLOR="1", PY_COLORS="0",
               PATH=BIN + os.pathsep + env.get("PATH", os.defpath))
    return env


def pip_bootstrap_version():
    """The pip version ansible-test bootstraps, which names its cached get-pip file."""
    import ansible_test
    source = os.path.join(os.path.dirname(ansible_test.__file__), "_internal", "python_requirements.py")
    with open(source, encoding="utf-8") as f:
        match = re.search(r"""default_packages = dict\(\s*pip=['"]([0-9.]+)['"]""", f.read())
    assert match, f"cannot find the pip version ansible-test bootstraps in {source}"
    return match.group(1)


def provide_get_pip(home):
    cache = os.path.join(home, ".ansible", "test", "cache")
    os.makedirs(cache, exist_ok=True)
    path = os.path.join(cache, "get_pip_%s.py" % pip_bootstrap_version().replace(".", "_"))
    current = None
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            current = f.read()
    if current != GET_PIP_STAND_IN:
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            f.write(GET_PIP_STAND_IN)
        os.replace(path + ".tmp", path)


def run_gate(argv, cwd, env, timeout):
    try:
        return subprocess.run(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
        pytest.fail(f"{' '.join(argv[:2])} ran longer than {timeout} s:\n{out[-20000:]}")


@pytest.fixture(scope="module")
def files():
    return checkout_files()


@pytest.fixture(scope="module")
def home():
    return gates_home()


@pytest.mark.timeout(900)
def test_ansible_test_sanity(files, home, tmp_path):
    tree = copy_collection([p for p in files if is_collection_content(p)], str(tmp_path))
    argv = [ANSIBLE_TEST, "sanity", "--local", "--python", PYTHON_VERSION, "--color", "no"]
    # One run at a time builds or uses the virtualenvs kept in this HOME.
    with open(os.path.join(home, ".lock"), "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        provide_get_pip(home)
        proc = run_gate(argv, tree, gate_env(home, str(tmp_path)), timeout=840)
    # stdout has the findings (ERROR: path:line:col: ...) among pip's output; stderr the verdict.
    findings = "\n".join(line for line in proc.stdout.splitlines() if line.startswith(("ERROR:", "WARNING:")))
    assert proc.returncode == 0, (
        f"ansible-test sanity found problems (rc {proc.returncode}):\n{findings}\n{proc.stderr}\n"
        f"--- the end of its output ---\n{proc.stdout[-3000:]}")


@pytest.mark.timeout(600)
def test_ansible_lint_production_profile(files, home, tmp_path):
    tree = copy_collection(files, str(tmp_path))
    # --offline: the collection has no dependencies to install, and is found in the copy.
    argv = [ANSIBLE_LINT, "--offline", "--profile", "production", "--nocolor", "--format", "pep8"]
    proc = run_gate(argv, tree, gate_env(home, str(tmp_path)), timeout=540)
    assert proc.returncode == 0, f"ansible-lint found problems (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
