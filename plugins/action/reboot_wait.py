"""reboot_wait: wait for a terminal to come back from a reboot that was already started.

An action plugin: it asks the terminal for its boot id over the connection (no module, no
Python on the way) until the id differs from the one taken before the reboot. A terminal
that has not gone down yet still answers with the old id, one that is down does not answer;
both mean "not yet". So it needs no fixed delay, and a terminal that came back while
Ansible's forks were busy with others is found back at the first ask: the reboots of a
batch overlap whatever the forks."""

from __future__ import annotations

import time

from ansible.errors import AnsibleConnectionFailure
from ansible_collections.p2pfleet.imaging.plugins.plugin_utils._action import ArgSpecAction, one_line

BOOT_ID = "/proc/sys/kernel/random/boot_id"
ARGUMENT_SPEC = dict(
    boot_id=dict(type="str", required=True),
    timeout=dict(type="int", default=600),
    interval=dict(type="float", default=2.0),
)


class ActionModule(ArgSpecAction):
    ARGUMENT_SPEC = ARGUMENT_SPEC

    def _boot_id(self):
        """The boot id the terminal answers with now, or ``("", why not)``."""
        try:
            out = self._low_level_execute_command(f"cat {BOOT_ID}", sudoable=False)
        except AnsibleConnectionFailure as exc:
            # The connection of the old boot is gone with it: start a new one next time.
            try:
                self._connection.reset()
            except AnsibleConnectionFailure:
                pass
            return "", one_line(exc, 200)
        if out.get("rc") != 0:
            return "", one_line(out.get("stderr") or out.get("stdout"), 200)
        return (out.get("stdout") or "").strip(), ""

    def run_action(self, args, result, task_vars):
        before = args["boot_id"].strip()
        if not before:
            return dict(result, failed=True, msg="boot_id: empty; give the boot id taken before the reboot")
        if self._task.check_mode:
            return dict(result, changed=False, skipped=True, msg="check mode: no reboot was started")
        start = time.monotonic()
        seen, why = "", "no answer yet"
        while True:
            now, problem = self._boot_id()
            if now and now != before:
                return dict(result, changed=False, boot_id=now, elapsed=round(time.monotonic() - start, 1))
            if now:
                seen, why = now, "still the boot from before the reboot"
            elif problem:
                why = problem
            if time.monotonic() - start >= args["timeout"]:
                what = ("did not go down: it still runs the boot from before" if seen and why.startswith("still")
                        else f"did not come back ({why})")
                return dict(result, failed=True, elapsed=round(time.monotonic() - start, 1),
                            msg=f"not back from its reboot within {args['timeout']} s: {what}")
            time.sleep(max(0.2, args["interval"]))
