"""Running a real ``p2pfleet agent`` process and talking to it through the modules' client."""
import json
import os
import signal
import subprocess

import yaml

from ansible_collections.p2pfleet.imaging.plugins.module_utils._agent_client import AgentClient, AgentError

from . import P2PFLEET, wait


class AgentProc:
    """An agent process with its config, socket and state directory under ``root``."""

    def __init__(self, root, port, **config):
        self.root = root
        self.socket = config.pop("socket", str(root / "agent.sock"))
        self.state_dir = str(root / "state")
        self.config_path = root / "agent.yml"
        self.config = {"listen": f"127.0.0.1:{port}", "socket": self.socket, "state_dir": self.state_dir,
                       "log_level": "debug", **config}
        self.config_path.write_text(yaml.safe_dump(self.config))
        self.log_path = root / "agent.log"
        self.client = AgentClient(self.socket, timeout=60)
        self.popen = None
        self.starts = 0

    def start(self, timeout=30):
        self.starts += 1
        self._log = open(self.log_path, "a")
        self.popen = subprocess.Popen(P2PFLEET + ["agent", "--config", str(self.config_path)],
                                      stdout=self._log, stderr=subprocess.STDOUT)
        wait.until(self._answering, timeout, f"agent answering on {self.socket}",
                   detail=lambda: self.log()[-3000:])
        return self

    def _answering(self):
        if self.popen.poll() is not None:
            raise AssertionError(f"agent exited {self.popen.returncode} at start:\n{self.log()[-3000:]}")
        try:
            return self.client.info()["pid"] == self.popen.pid
        except AgentError:
            return False

    def log(self):
        return self.log_path.read_text() if self.log_path.exists() else ""

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.popen is None or self.popen.poll() is not None:
            return self.popen.returncode if self.popen else None
        self.popen.send_signal(sig)
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)
            raise AssertionError(f"agent still running {timeout} s after {sig!r}:\n{self.log()[-3000:]}") from None
        self._log.close()
        return code

    def wait_job(self, job_id, predicate, timeout, what):
        """Poll the job through the API until ``predicate(job)``; a failed job fails at once."""
        last = [None]

        def done():
            job = last[0] = self.client.job(job_id)
            if job is not None and predicate(job):
                return job
            if job is not None and job["state"] == "failed":
                raise AssertionError(f"{what}: job failed: {job['error']}\n{self.log()[-3000:]}")
            return None

        return wait.until(done, timeout, what, interval=0.1,
                          detail=lambda: f"last {json.dumps(last[0])}\n{self.log()[-3000:]}")

    def resume_file(self, info_hash):
        return os.path.join(self.state_dir, "jobs", info_hash + ".resume")
