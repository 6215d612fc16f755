"""engine/runtime.py: the daemons' files load in a Python without libtorrent and aiohttp (as in
ansible-test's import check), and any use of a missing package there names it."""
import subprocess
import sys
import textwrap

from helpers import ROOT

WITHOUT_RUNTIME = textwrap.dedent('''\
    import sys

    class NoRuntime:
        """This Python has neither libtorrent nor aiohttp."""
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("libtorrent", "aiohttp"):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, NoRuntime())
    sys.path.insert(0, sys.argv[1])
    ''')


def run_without_runtime(code):
    return subprocess.run([sys.executable, "-c", WITHOUT_RUNTIME + textwrap.dedent(code), f"{ROOT}/plugins/module_utils"],
                          capture_output=True, text=True, timeout=60, check=False)


def test_daemon_files_load_without_their_runtime():
    proc = run_without_runtime('''\
        import engine.cli, engine.session, engine.tracker.server, engine.tracker.connections, engine.tracker.cli
        print("loaded")
        ''')
    assert proc.returncode == 0 and proc.stdout.strip() == "loaded", proc.stderr


def test_a_missing_package_names_itself_when_used():
    proc = run_without_runtime('''\
        from engine import runtime, session
        for use in (lambda: session.lt.session(), lambda: runtime.web.run_app(None)):
            try:
                use()
            except ImportError as exc:
                print(exc)
        ''')
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 2, proc.stdout
    assert lines[0].startswith("libtorrent.session: this Python (") and "lacks libtorrent" in lines[0]
    assert lines[1].startswith("aiohttp.run_app: ") and "requirements.txt" in lines[1]


def test_with_the_runtime_the_names_are_the_packages_own():
    import aiohttp.web
    import libtorrent
    from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine import runtime
    assert runtime.libtorrent is libtorrent and runtime.web is aiohttp.web
