"""The collection as it is published, and the tools that judge it run in homes of their own.

``build_tarball`` is ``ansible-galaxy collection build`` of the checkout (galaxy.yml's
``build_ignore`` decides what goes in); ``install_tarball`` is what a user's
``ansible-galaxy collection install`` makes of it. The gates (ansible-test, ansible-lint,
galaxy-importer, ansible-builder) run with a HOME of their own under
~/.cache/p2pfleet-quality-gates/, so they neither read nor fill the user's ~/.ansible, and
keep their virtualenvs there between runs.
"""
import glob
import hashlib
import os
import shutil
import subprocess
import sys

import pytest

from . import ROOT

BIN = os.path.dirname(sys.executable)
GALAXY = os.path.join(BIN, "ansible-galaxy")
# What a checkout without git (an unpacked archive) must not carry into the copies.
LOCAL_STATE = {".git", ".venv", ".ansible", ".pytest_cache", ".hypothesis", "__pycache__"}


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


def build_tarball(out_dir, source):
    proc = subprocess.run([GALAXY, "collection", "build", str(source), "--output-path", str(out_dir)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"ansible-galaxy collection build failed:\n{proc.stdout}\n{proc.stderr}"
    (tarball,) = glob.glob(os.path.join(str(out_dir), "p2pfleet-imaging-*.tar.gz"))
    return tarball


def install_tarball(tarball, top):
    """Install ``tarball`` as top/ansible_collections/p2pfleet/imaging; return that directory."""
    proc = subprocess.run([GALAXY, "collection", "install", "--force", str(tarball), "-p", str(top)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"ansible-galaxy collection install failed:\n{proc.stdout}\n{proc.stderr}"
    return os.path.join(str(top), "ansible_collections", "p2pfleet", "imaging")


def cache_root():
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "p2pfleet-quality-gates")


def gates_home(*identity):
    """A tools' HOME kept per ``identity`` (an interpreter and a tool version: the virtualenvs
    kept there are made from the one and hold what the other pins)."""
    home = os.path.join(cache_root(), hashlib.sha256("\0".join(identity).encode()).hexdigest()[:12])
    os.makedirs(home, exist_ok=True)
    return home


def gate_env(home, collections_top, bin_dir=BIN):
    """The tools' environment: their own HOME, no inherited ANSIBLE_* settings, ``bin_dir`` first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "GALAXY_IMPORTER_"))}
    user_home = os.path.expanduser("~")
    # pip keeps reading the user's configuration and download cache.
    env.setdefault("XDG_CONFIG_HOME", os.path.join(user_home, ".config"))
    env.setdefault("XDG_CACHE_HOME", os.path.join(user_home, ".cache"))
    env.update(HOME=home, ANSIBLE_COLLECTIONS_PATH=str(collections_top), NO_COLOR="1", PY_COLORS="0",
               PATH=bin_dir + os.pathsep + env.get("PATH", os.defpath))
    return env


def run_gate(argv, cwd, env, timeout):
    try:
        return subprocess.run(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
        pytest.fail(f"{' '.join(argv[:2])} ran longer than {timeout} s:\n{out[-20000:]}")
