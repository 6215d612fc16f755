"""Driving a running virtual lab from tests: SSH, ad-hoc Ansible, playbooks, bounded waits.

The session fixture ``lab`` (tests/conftest.py) yields a ``LabHandle``; tests of later issues
use the same handle: ``lab.inventory`` for ansible-playbook, ``lab.ssh(host, cmd)`` for a
command in a host, ``lab.playbook(tasks, hosts)`` for a few tasks with results as JSON,
``lab.power_off(host)`` / ``lab.power_on(host)`` for a hard power cut and a cold boot.
"""
import json
import os
import subprocess
import sys
import tempfile

from lab import lab as labmod

from . import wait

BIN = os.path.dirname(sys.executable)
CALLBACKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "ansible_plugins", "callback")


def ansible_env():
    env = dict(os.environ)
    env.update(ANSIBLE_STDOUT_CALLBACK="lab_json", ANSIBLE_CALLBACK_PLUGINS=CALLBACKS,
               ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_FORKS="10",
               ANSIBLE_RETRY_FILES_ENABLED="0", ANSIBLE_NOCOLOR="1")
    return env


class LabHandle:
    def __init__(self, state):
        self.state = state
        self.name = state["name"]
        self.inventory = state["inventory"]
        self.hosts = state["hosts"]
        self.terminals = [n for n, h in self.hosts.items() if h["role"] == "terminal"]

    def address(self, host):
        return self.hosts[host]["address"]

    def ssh(self, host, command, timeout=60, check=True, stdin=None):
        """Run ``command`` in ``host`` over SSH; returns its stdout (fails the test on an error)."""
        proc = labmod.ssh(self.state, host, command, timeout=timeout, stdin=stdin)
        if check and proc.returncode != 0:
            raise AssertionError(f"ssh {host} {command!r} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout

    def ansible(self, pattern, module, args=None, timeout=180):
        """Ad-hoc ``ansible PATTERN -m MODULE``; returns {host: result} from the json callback."""
        cmd = [os.path.join(BIN, "ansible"), pattern, "-i", self.inventory, "-m", module]
        if args:
            cmd += ["-a", args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ansible_env())
        try:
            return json.loads(proc.stdout)["plays"][0]["tasks"][0]["hosts"]
        except (ValueError, KeyError, IndexError):
            raise AssertionError(f"ansible {pattern} -m {module} gave no results ({proc.returncode}):\n"
                                 f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}") from None

    def playbook(self, hosts, tasks, timeout=300):
        """Run ``tasks`` on ``hosts``; returns the json callback's plays, failing on any failed task."""
        play = [{"hosts": hosts, "gather_facts": False, "tasks": tasks}]
        with tempfile.NamedTemporaryFile("w", suffix=".yml") as f:
            json.dump(play, f)          # JSON is YAML
            f.flush()
            proc = subprocess.run([os.path.join(BIN, "ansible-playbook"), "-i", self.inventory, f.name],
                                  capture_output=True, text=True, timeout=timeout, env=ansible_env())
        if proc.returncode != 0:
            raise AssertionError(f"playbook on {hosts} failed ({proc.returncode}):\n"
                                 f"{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}")
        return json.loads(proc.stdout)

    def testinfra(self, host):
        """A testinfra host over SSH with the lab's key (its ansible:// backend with a local
        connection would silently test the controller instead)."""
        import testinfra
        return testinfra.get_host(f"ssh://root@{self.address(host)}", ssh_identity_file=self.state["key"],
                                  ssh_extra_args=" ".join(labmod.SSH_OPTIONS))

    def firmware(self, host):
        return labmod.firmware_status(self.state, host)

    def power_off(self, host):
        """Cut the host's power (lab.power_off): everything of it SIGKILLed, it stays off; its disk
        and namespace stay. False if it was off already."""
        return labmod.power_off(self.state, host)

    def power_on(self, host, wait=True, timeout=labmod.BOOT_TIMEOUT):
        """Power the host on (a cold boot: the firmware applies the boot rule); by default waits
        until sshd answers. False if it was on already."""
        return labmod.power_on(self.state, host, wait=wait, timeout=timeout)

    def add_disk(self, host, size):
        """A second, blank disk for a terminal (lab.add_disk), seen from its next power-on."""
        return labmod.add_disk(self.state, host, size)

    def is_powered(self, host):
        return labmod.is_powered(self.state, host)

    def firmware_log(self, host):
        with open(os.path.join(self.state["dir"], "hosts", host, "firmware.log"), errors="replace") as f:
            return f.read()

    def wait_for(self, what, predicate, timeout=120, interval=0.5):
        """Poll ``predicate`` until it returns a true value; fail naming ``what`` after ``timeout``."""
        return wait.until(predicate, timeout, what, interval=interval)
