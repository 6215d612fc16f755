# -*- coding: utf-8 -*-
# Copyright: p2pfleet.imaging contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""fleet_wait: follow one image's swarm on the tracker from the controller, printing a
progress line for the whole lab every few seconds, until every terminal holds the image.

An action plugin, so it runs on the controller and can talk while it waits: one line per
report interval (small, steady output for AWX), never pages of "retrying" lines."""

from __future__ import annotations

import json
import re
import time

from ansible.errors import AnsibleActionFail
from ansible.module_utils.urls import open_url
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

display = Display()

# The options of plugins/modules/fleet_wait.py (its DOCUMENTATION says the same, a unit test
# holds them equal). A list option also takes a comma-separated string, as in every module.
ARGUMENT_SPEC = dict(
    url=dict(type="str", required=True),
    info_hash=dict(type="str", required=True),
    terminals=dict(type="list", elements="str", required=True),
    timeout=dict(type="int", default=7200),
    stall_timeout=dict(type="int", default=600),
    interval=dict(type="float", default=2),
    report_every=dict(type="float", default=10),
)
# What the tracker accepts as host= (engine/tracker/announce.py): any other name is never found.
_HOST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")


def _mib(n):
    return f"{n / (1 << 20):,.1f} MiB"


def _eta(seconds):
    if seconds is None:
        return "--:--"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


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
    for name in ("timeout", "stall_timeout"):
        if args[name] < 0:
            refuse(name, "must be 0 or more seconds")
    for name in ("interval", "report_every"):
        if not 0 < args[name] <= 86400:
            refuse(name, "must be more than 0 and at most 86400 seconds")


class ActionModule(ActionBase):

    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        # One line naming the option for a bad one (ArgumentSpecValidator underneath).
        _validation, args = self.validate_argument_spec(ARGUMENT_SPEC)
        _check(args)
        base = args["url"].rstrip("/")
        info_hash = args["info_hash"].lower()
        terminals = args["terminals"]
        timeout, stall_timeout = args["timeout"], args["stall_timeout"]
        interval, report_every = args["interval"], args["report_every"]
        status_url = f"{base}/status/{info_hash}.json"
        display.display(f"p2pfleet: fleet page {base}/ — following {len(terminals)} terminals")

        started = time.monotonic()
        last_report = last_change = started
        last_left = None
        swarm = {}
        while True:
            swarm = self._status(status_url)
            rows = {p.get("host"): p for p in swarm.get("peers", []) if not p.get("origin")}
            size = swarm.get("image_size") or 0
            left = sum(rows[t]["left"] if t in rows else size for t in terminals)
            complete = [t for t in terminals if t in rows and rows[t].get("left") == 0]
            now = time.monotonic()
            if left != last_left:
                last_left, last_change = left, now
            if len(complete) == len(terminals):
                break
            if now - last_report >= report_every:
                last_report = now
                display.display(self._line(swarm, terminals, rows, size, left, complete, now - started))
            if now - started > timeout:
                raise AnsibleActionFail(f"fleet_wait: not every terminal has the image after {timeout} s; "
                                        f"missing: {', '.join(t for t in terminals if t not in complete)}",
                                        result=dict(swarm=swarm))
            if stall_timeout and now - last_change > stall_timeout:
                raise AnsibleActionFail(f"fleet_wait: no progress for {stall_timeout} s; waiting for "
                                        f"{', '.join(t for t in terminals if t not in complete)}",
                                        result=dict(swarm=swarm))
            time.sleep(interval)
        seconds = time.monotonic() - started
        display.display(self._line(swarm, terminals, rows, size, 0, complete, seconds))
        result.update(changed=False, done=True, seconds=round(seconds, 1), swarm=swarm,
                      mib_per_second=round(size * len(terminals) / (1 << 20) / max(seconds, 1e-9), 1))
        return result

    def _status(self, url):
        try:
            return json.loads(open_url(url, timeout=10).read())
        except Exception as exc:  # any failure to read the tracker: one line naming the URL
            if getattr(exc, "code", None) == 404:
                raise AnsibleActionFail(f"fleet_wait: {url}: the tracker does not know this image") from None
            raise AnsibleActionFail(f"fleet_wait: {url}: cannot read the tracker's status: {exc}") from None

    @staticmethod
    def _line(swarm, terminals, rows, size, left, complete, elapsed):
        total = size * len(terminals)
        done = total - left
        totals = swarm.get("totals", {})
        rate = totals.get("download_rate", 0)
        silent = [t for t in terminals if t not in rows or rows[t].get("state") in ("silent", "stopped")]
        eta = left / rate if rate else None
        line = (f"p2pfleet: {swarm.get('name', '?')} {100 * done / total if total else 100:5.1f} % · "
                f"{len(complete)}/{len(terminals)} terminals done · {_mib(done)} of {_mib(total)} · "
                f"↓ {_mib(rate)}/s · ETA {_eta(eta)} · {int(elapsed)} s")
        if silent:
            line += f" · not heard from: {', '.join(silent[:8])}{' …' if len(silent) > 8 else ''}"
        return line
