"""The daemons' third-party runtime, imported in one place: libtorrent and aiohttp.

The swarm session, the tracker, the agent and the command line run in a virtualenv that has
requirements.txt: the one the engine role makes on every host (/opt/p2pfleet/venv) or the
checkout's .venv. bin/p2pfleet starts only in such a Python, and no module imports a file
that needs these packages.

Other Pythons load those files without running them: ansible-test's import check (the one
Automation Hub certification runs) imports every file under module_utils in a bare Python.
There a missing package is a ``Missing`` stand-in carrying only the few names the daemons
use while their files load (a base class, a decorator, an annotation, a key); anything else
raises an ImportError naming the package and where it comes from.
"""
import sys

__all__ = ["HttpProcessingError", "Missing", "libtorrent", "web"]


class Missing:
    """A package of requirements.txt that this Python lacks."""

    def __init__(self, package, error, **import_time_names):
        self._package = package
        self._error = error
        self.__dict__.update(import_time_names)

    def __getattr__(self, name):
        raise ImportError(
            f"{self._package}.{name}: this Python ({sys.executable}) lacks {self._package} ({self._error}); "
            "the p2pfleet engine runs in a virtualenv with its requirements.txt (make venv in a checkout, "
            "/opt/p2pfleet/venv on a host the engine role installed)")


class _MissingBase:
    """Stands for a class of a missing package that a daemon's class derives from."""


try:
    import libtorrent
except ImportError as exc:
    libtorrent = Missing("libtorrent", exc)

try:
    from aiohttp import web
    from aiohttp.http_exceptions import HttpProcessingError
except ImportError as exc:
    web = Missing("aiohttp", exc, BaseSite=_MissingBase, Application=_MissingBase,
                  AppKey=lambda name, kind=None: name, middleware=lambda handler: handler)

    class HttpProcessingError(Exception):
        """Stands for aiohttp's: nothing raises it without aiohttp."""
