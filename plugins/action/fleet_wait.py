"""fleet_wait: follow one image's swarm on the tracker from the controller, printing a
progress line for the whole lab every few seconds, until every terminal not dropped holds
the image.

An action plugin, so it runs on the controller and can talk while it waits: one line per
report interval and one per event (a terminal dropped, the tracker away or back), small and
steady output for AWX, never pages of "retrying" lines. What counts as done, dropped or
stalled is decided in engine/tracker/fleet.py; this file reads the tracker and prints."""

from __future__ import annotations

import json
import re
import time

from ansible.errors import AnsibleActionFail
from ansible.module_utils.urls import open_url
from ansible.utils.display import Display
from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.tracker.aggregate_log import one_line
from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.tracker.fleet import FleetWait, WaitFailed, status_url
from ansible_collections.p2pfleet.imaging.plugins.plugin_utils._action import ArgSpecAction

display = Display()

# The options of plugins/modules/fleet_wait.py (its DOCUMENTATION says the same, a unit test
# holds them equal). A list option also takes a comma-separated string, as in every module.
ARGUMENT_SPEC = dict(
    url=dict(type="str", required=True),
    info_hash=dict(type="str", required=True),
    terminals=dict(type="list", elements="str", required=True),
    timeout=dict(type="int", default=0),
    stall_timeout=dict(type="int", default=600),
    drop_after=dict(type="int", default=300),
    tracker_grace=dict(type="int", default=300),
    interval=dict(type="float", default=2),
    report_every=dict(type="float", default=10),
)
# What the tracker accepts as host= (engine/tracker/announce.py): any other name is never found.
_HOST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")
# Seconds one read of the tracker may take; a slower answer counts as the tracker away.
_READ_TIMEOUT = 10


def _check(args):
    """What a type alone does not say; AnsibleActionFail naming the option."""
    def refuse(name, what):
        raise AnsibleActionFail(f"argument '{name}' {what}, got {args[name]!r}")

    if not args["url"].startswith(("http://", "https://")):
        refuse("url", "must be the tracker's http:// or https:// base URL")
    if not re.fullmatch(r"[0-9a-fA-F]{40}", args["info_hash"]):
        refuse("info_hash", "must be 40 hex digits")
    if not args["terminals"]:
        refuse("terminals", "must name at least one terminal")
    for name in args["terminals"]:
        if not _HOST_NAME.fullmatch(name):
            raise AnsibleActionFail(f"argument 'terminals': {name!r} is not a host name "
                                    f"(a list of inventory names, or one string of names separated by commas)")
    for name in ("timeout", "stall_timeout", "drop_after", "tracker_grace"):
        if args[name] < 0:
            refuse(name, "must be 0 or more seconds")
    for name in ("interval", "report_every"):
        if not 0 < args[name] <= 86400:
            refuse(name, "must be more than 0 and at most 86400 seconds")


class ActionModule(ArgSpecAction):

    ARGUMENT_SPEC = ARGUMENT_SPEC

    def run_action(self, args, result, task_vars):
        _check(args)
        base = args["url"].rstrip("/")
        url = status_url(base, args["info_hash"])
        interval, report_every = args["interval"], args["report_every"]
        display.display(f"p2pfleet: fleet page {base}/ — following {len(args['terminals'])} terminals")

        started = last_report = time.monotonic()
        wait = FleetWait(args["terminals"], args["drop_after"], args["stall_timeout"], args["tracker_grace"],
                         args["timeout"], started, time.time())
        while True:
            status, error = self._read(url)
            now = time.monotonic()
            events = wait.read(status, now) if error is None else wait.unreachable(error, now, time.time())
            for event in events:
                display.display(f"p2pfleet: {event}")
            try:
                if wait.verdict(now):
                    break
            except WaitFailed as exc:
                raise AnsibleActionFail(str(exc), result=dict(swarm=wait.status, **wait.outcome())) from None
            if now - last_report >= report_every:
                last_report = now
                display.display(wait.line(now))
            time.sleep(interval)
        seconds = max(time.monotonic() - started, 1e-9)
        display.display(wait.line(time.monotonic()))
        outcome = wait.outcome()
        size = wait.status.get("image_size") or 0
        result.update(changed=False, seconds=round(seconds, 1), swarm=wait.status, **outcome,
                      mib_per_second=round(size * len(outcome["done"]) / (1 << 20) / seconds, 1))
        return result

    @staticmethod
    def _read(url):
        """(status, None), or (None, one line) when the tracker cannot be read now."""
        try:
            return json.loads(open_url(url, timeout=_READ_TIMEOUT).read()), None
        except Exception as exc:  # open_url raises many types; any failure to read is the tracker away
            if getattr(exc, "code", None) == 404:
                raise AnsibleActionFail(f"fleet_wait: {url}: the tracker does not know this image") from None
            return None, f"{url}: {one_line(exc)}"
