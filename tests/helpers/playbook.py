"""Real ``ansible-playbook`` runs against a lab, read the way an administrator reads them:
the exit code, the PLAY RECAP per host, and which tasks changed what."""
import json
import os
import re
import subprocess
import sys
import tempfile
import time

BIN = os.path.dirname(sys.executable)
_RECAP = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)\s+skipped=(\d+)")
_TASK = re.compile(r"^(?:TASK|RUNNING HANDLER) \[(.*)\] \*+$")
_CHANGED = re.compile(r"^changed: \[([^\]]+)\]")


class Run:
    def __init__(self, proc):
        self.rc = proc.returncode
        self.out = proc.stdout
        self.err = proc.stderr
        self.recap = {}
        self.changed = []          # (task, host) for every "changed:" line
        self.failures = []         # "task: fatal line" for every failure, however early
        task = None
        for line in self.out.splitlines():
            if line.startswith(("fatal: [", "failed: [")):
                self.failures.append(f"{task}: {line[:800]}")
            if m := _TASK.match(line):
                task = m.group(1)
            elif (m := _CHANGED.match(line)) and task:
                self.changed.append((task, m.group(1).split(" -> ")[0]))
            elif m := _RECAP.match(line):
                self.recap[m.group(1)] = {"ok": int(m.group(2)), "changed": int(m.group(3)),
                                          "unreachable": int(m.group(4)), "failed": int(m.group(5))}

    def tail(self, n=6000):
        """The end of the output, after every failure of the run (a tail alone can miss them)."""
        failures = "".join(f"FAILURE {f}\n" for f in self.failures[:20])
        return failures + self.out[-n:] + "\n" + self.err[-2000:]

    def changed_tasks(self, host=None):
        return sorted({task for task, h in self.changed if host is None or h == host})

    def flat(self):
        """The output with runs of whitespace made one space (messages wrap)."""
        return " ".join(self.out.split())


def collections_env(collections, **extra):
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=collections, ANSIBLE_FORKS="10", ANSIBLE_NOCOLOR="1",
               ANSIBLE_RETRY_FILES_ENABLED="0", ANSIBLE_DEPRECATION_WARNINGS="False",
               ANSIBLE_LOCALHOST_WARNING="False", ANSIBLE_INVENTORY_UNPARSED_WARNING="False")
    env.update(extra)
    return env


def run_playbook(inventory, collections, playbook, *args, timeout=1500, popen=False):
    """Run ``playbook`` (a path, or a list of plays written to a temporary file)."""
    if not isinstance(playbook, str):
        handle = tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False)
        json.dump(playbook, handle)          # JSON is YAML
        handle.close()
        playbook = handle.name
    cmd = [os.path.join(BIN, "ansible-playbook"), "-i", inventory, playbook, *args]
    if popen:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=collections_env(collections), start_new_session=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=collections_env(collections))
    logs = os.environ.get("P2PFLEET_TEST_LOGS")
    if logs:  # every run's whole output, for a failure whose assertion shows only the tail
        os.makedirs(logs, exist_ok=True)
        name = f"{time.strftime('%H%M%S')}-{os.path.basename(playbook)}.log"
        with open(os.path.join(logs, name), "w") as f:
            f.write(proc.stdout + proc.stderr)
    return Run(proc)
