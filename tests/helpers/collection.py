"""This checkout as Ansible names it: ``ansible_collections.p2pfleet.imaging``.

Tests, benchmarks and the lab's scripts import the collection's code under that name, as
AnsiballZ and the action plugins do, so the engine has one module identity in a process.
``importable()`` makes the name once per process: a private temporary directory holding
``ansible_collections/p2pfleet/imaging`` as a link to this checkout goes first on ``sys.path``
(a copy installed under ``.ansible/`` or another checkout's tests cannot answer for it).
Only the standard library here: the scripts that use it import nothing else first.
"""
import atexit
import importlib
import os
import shutil
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NAME = "ansible_collections.p2pfleet.imaging"

_top = None


def link(top):
    """``top/ansible_collections/p2pfleet/imaging`` -> this checkout; returns ``top`` (a
    directory for ``sys.path`` or ``ANSIBLE_COLLECTIONS_PATH``)."""
    parent = os.path.join(str(top), "ansible_collections", "p2pfleet")
    os.makedirs(parent, exist_ok=True)
    path = os.path.join(parent, "imaging")
    if not os.path.lexists(path):
        os.symlink(ROOT, path)
    return str(top)


def importable():
    """Make ``ansible_collections.p2pfleet.imaging`` import from this checkout; returns the
    directory put on ``sys.path``. Fails if the name still resolves elsewhere."""
    global _top
    if _top is None:
        top = link(tempfile.mkdtemp(prefix="p2pfleet-collection-"))
        creator = os.getpid()
        # Only the process that made it removes it (a forked child exiting leaves it alone);
        # rmtree unlinks the link without following it.
        atexit.register(lambda: os.getpid() == creator and shutil.rmtree(top, ignore_errors=True))
        sys.path.insert(0, top)
        _top = top
    module_utils = importlib.import_module(NAME + ".plugins.module_utils")
    found = [os.path.realpath(p) for p in module_utils.__path__]
    if found[:1] != [os.path.join(os.path.realpath(ROOT), "plugins", "module_utils")]:
        raise ImportError(f"{NAME} resolves to {found}, not to the checkout at {ROOT}")
    return _top
