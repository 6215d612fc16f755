"""Running real p2pfleet processes for swarm tests, with bounded waits."""
import json
import os
import signal
import subprocess

from . import P2PFLEET, wait
from .tracker import free_port  # noqa: F401  (re-exported for the swarm tests)


class Proc:
    """A p2pfleet process whose JSON-lines stderr and JSON stdout are read as it runs."""

    def __init__(self, *args, log_path):
        self.args = [str(a) for a in args]
        self.log_path = str(log_path)
        self._err = open(self.log_path + ".err", "w")
        self._out = open(self.log_path + ".out", "w")
        self.popen = subprocess.Popen(P2PFLEET + ["--json"] + self.args, stdout=self._out, stderr=self._err)

    def events(self):
        with open(self.log_path + ".err") as f:
            lines = f.read().splitlines()
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"event": "text", "text": line})
        return out

    def stderr(self):
        with open(self.log_path + ".err") as f:
            return f.read()

    def result(self):
        with open(self.log_path + ".out") as f:
            text = f.read().strip()
        return json.loads(text.splitlines()[-1]) if text else None

    def wait_for(self, predicate, timeout, what):
        def holds():
            if predicate(self):
                return True
            if self.popen.poll() is not None and not predicate(self):
                raise AssertionError(f"{what}: process exited {self.popen.returncode}:\n{self.stderr()[-2000:]}")
            return False

        wait.until(holds, timeout, what, detail=lambda: self.stderr()[-2000:])

    def wait_exit(self, timeout, what):
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{what}: still running after {timeout} s:\n{self.stderr()[-2000:]}") from None

    def last_progress(self):
        progress = [e for e in self.events() if e.get("event") == "progress"]
        return progress[-1] if progress else None

    def stop(self, sig=signal.SIGTERM):
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self._err.close()
        self._out.close()


def start_seeder(procs, tmp_path, manifest, image, *extra):
    port = free_port()
    proc = Proc("seed", manifest, image, "--listen", f"127.0.0.1:{port}", "--progress-interval", "0.5",
                *extra, log_path=tmp_path / f"seed{port}")
    procs.append(proc)
    proc.wait_for(ready_seeder, 30, "seeder ready")
    return port


def ready_seeder(proc):
    return any("ready after" in e.get("text", "") for e in proc.events())


def file_digest(path, size):
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        left = size
        while left:
            chunk = f.read(min(left, 4 << 20))
            if not chunk:
                break
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


def wait_file_changes(path, since_mtime, timeout, what):
    def written():
        try:
            return os.stat(path).st_mtime_ns > since_mtime
        except FileNotFoundError:
            return False

    wait.until(written, timeout, f"{what}: {path} written")
