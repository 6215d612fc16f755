"""reimage_summary: one line per terminal and one for the fleet, after a reimage run.

An action plugin, so that it runs once on the controller and reads what every terminal
reported in this run (``hostvars``): the agent's reimage record (module ``reimage``), the
fleet wait's dropped terminals, the verdict's reason. What an outcome is, is decided in
engine/reimage.py (``outcome``); this file gathers and prints."""

from __future__ import annotations

from ansible.errors import AnsibleActionFail
from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.reimage import outcome
from ansible_collections.p2pfleet.imaging.plugins.plugin_utils._action import ArgSpecAction, one_line

ARGUMENT_SPEC = dict(
    terminals=dict(type="list", elements="str", required=True),
    release=dict(type="str", default=""),
)
MIB = 1048576


def row(host, hv, release, dropped):
    """A terminal's row from what it reported in this run."""
    report = hv.get("p2pfleet_summary") or {}
    record = report.get("record") or {}
    # The job as the run last saw it: after a switch the new system may run no agent yet.
    job = report.get("job") or (hv.get("p2pfleet_verdict") or {}).get("job") or (hv.get("p2pfleet_plan") or {}).get("job") or {}
    situation = report.get("situation") or {}
    booted = situation.get("booted", "")
    result, why = outcome(record, release, booted, situation.get("fallback"))
    if host in dropped and result != "switched":
        # Dropped by this run's wait: the reason it gave says more than "unreachable" now.
        result, why = "dropped", dropped[host]
    elif report.get("unreachable") or not report:
        # Not even in the summary's own play: Ansible leaves a host out of every later play
        # once it was unreachable in this run.
        result, why = "unreachable", one_line(report.get("msg")) or "no answer over SSH in this run"
    elif report.get("failed"):
        result, why = "failed", one_line(report.get("msg"))
    elif result == "not switched":
        verdicts = [hv.get("p2pfleet_verdict_wait") or {}, hv.get("p2pfleet_verdict") or {}]
        why = next((one_line(v["msg"]) for v in verdicts if v.get("failed") and v.get("msg")), why)
    return {"host": host, "slot": booted or "?", "image": record.get("name", "-"), "outcome": result,
            "why": why, "fetched": job.get("downloaded", 0) or 0, "local": job.get("local_bytes", 0) or 0}


class ActionModule(ArgSpecAction):
    ARGUMENT_SPEC = ARGUMENT_SPEC
    _requires_connection = False

    def run_action(self, args, result, task_vars):
        hostvars = task_vars.get("hostvars", {})
        release = args["release"] or next(
            (hostvars[h].get("p2pfleet_release", {}).get("info_hash", "") for h in args["terminals"]
             if h in hostvars and hostvars[h].get("p2pfleet_release")), "")
        dropped = {}
        for host in args["terminals"]:
            if host not in hostvars:
                raise AnsibleActionFail(f"argument 'terminals': {host!r} is not in the inventory")
            dropped.update((hostvars[host].get("p2pfleet_fleet") or {}).get("dropped") or {})
        rows = [row(host, hostvars[host], release, dropped) for host in args["terminals"]]
        lines = [f"{r['host']:<12} slot {r['slot']:<2} {r['image']:<28} fetched {r['fetched'] / MIB:9.1f} MiB  "
                 f"local {r['local'] / MIB:9.1f} MiB  {r['outcome']}: {r['why']}" for r in rows]
        counts = {}
        for r in rows:
            counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
        others = "".join(f", {n} {what}" for what, n in sorted(counts.items()) if what != "switched")
        lines.append(
            f"fleet: {counts.get('switched', 0)} of {len(rows)} switched{others}; "
            f"{sum(r['fetched'] for r in rows) / MIB:.1f} MiB fetched over the network, "
            f"{sum(r['local'] for r in rows) / MIB:.1f} MiB taken from the terminals' own disks")
        result.update(changed=False, msg=lines, rows={r["host"]: r for r in rows},
                      switched=counts.get("switched", 0) == len(rows))
        return result
