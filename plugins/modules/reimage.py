#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: p2pfleet.imaging contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: reimage
short_description: Plan, verify and record a terminal's reimage through its agent
version_added: 0.2.0
description:
  - The terminal's agent keeps its reimage record (release, target slot, phase C(fetching), C(verified), C(tried),
    C(confirmed) or C(rolled_back)) on the state partition and decides every move from the terminal's own facts;
    this module asks it for one step and returns the record. Playbooks keep no record of their own.
  - V(distribute) plans the release and starts its fetch. The target is the slot that is neither running nor one the
    boot environment falls back to, whatever an earlier record or run says. A terminal that already runs the release,
    confirmed, is left alone (C(action) C(current) in RV(plan)); one that runs a slot it only tried gets nothing fetched
    until that switch is finished (C(finish_switch)).
  - V(verify) takes the agent's own verdict, the whole-image digest its fetch proved, still bound to the slot (the slot
    ledger's entry is clean and the slot's fingerprint unchanged). A slot changed since is verified again by a fetch
    job on the agent (RV(pending)), never by a second read from here. Returns at once.
  - V(tried), V(confirmed) and V(rolled_back) take the switch one step, in the boot environment and in the record
    together, so that a run stopped between any two steps leaves both saying the same.
    V(tried) arms the verified slot to boot once at the next boot (the agent's job serving it lets go of it first);
    a terminal that already runs the slot (a run stopped after its reboot) or runs it confirmed is left as it is.
    V(confirmed) makes the slot the default, only while it is the slot running (after the administrator's health
    checks). V(rolled_back) drops the slot's one-shot and records why; on a terminal that runs the slot, RV(reboot)
    says that a reboot takes it back to its old slot. When the boot environment already has the slot as its
    default (only recording the switch failed), it is recorded V(confirmed) instead and RV(kept) is true.
  - With O(reboot=true), a step whose RV(reboot) is true also reboots the terminal, two seconds after the module
    returns, so that every terminal of a batch reboots together; wait for them with
    M(p2pfleet.imaging.reboot_wait) and the RV(boot_id) returned here.
  - V(read) returns the record and the slots as they are.
  - The agent needs the terminal's slots and boot settings in its config (the swarm_client role renders them from
    C(p2pfleet_slots) and C(p2pfleet_boot)).
  - On a terminal that runs no agent — a new slot just booted, before the roles install one into it — V(read),
    V(tried), V(confirmed) and V(rolled_back) are applied by the module itself, by the same rules, on the record in
    O(state_dir) (the state partition every slot shares), reading the slots from O(slots) and O(boot).
author: p2pfleet maintainers (!UNKNOWN)
extends_documentation_fragment:
  - p2pfleet.imaging.attributes
  - p2pfleet.imaging.slots
attributes:
  check_mode:
    support: partial
    details:
      - In check mode V(tried), V(confirmed) and V(rolled_back) run the engine's checks and say what they would change
        (RV(reboot), the record's next phase), writing nothing; a step the terminal's present state refuses is
        reported in C(msg), not as a failure (the stages before it would change that state).
      - V(distribute) and V(verify) return the record and slots as they are (V(read)) and change nothing.
  diff_mode:
    support: none
  idempotent:
    support: full
options:
  step:
    description: The step to take.
    type: str
    choices: [read, distribute, verify, tried, confirmed, rolled_back]
    default: read
  manifest:
    description: The release's manifest on this host (for O(step=distribute)).
    type: path
  reason:
    description: Why, for O(step=rolled_back) (shown in the summary).
    type: str
    default: ""
  reboot:
    description:
      - Reboot the terminal when the step says a reboot is due (RV(reboot)), that is O(step=tried) on a terminal that
        does not run the slot yet, or O(step=rolled_back) on one that does. The module returns first; the reboot
        follows two seconds later. Never in check mode.
    type: bool
    default: false
  trackers:
    description: Announce URLs of the fetch; the agent's own when empty.
    type: list
    elements: str
    default: []
  peers:
    description: Peers of the fetch as C(host:port), besides those the trackers name.
    type: list
    elements: str
    default: []
  seed_after:
    description: Keep seeding the slot after it is verified; the agent's C(seed_after_fetch) when not set.
    type: bool
  local_pieces:
    description:
      - Take the pieces the terminal already holds from its own disks first; the agent's default when not set.
      - Its old name O(local_sources) is deprecated and goes in release 0.3.0.
    type: bool
    aliases: [local_sources]
    version_added: 0.2.0
  stall_timeout:
    description: Seconds without progress before the fetch counts as stalled; the agent's default when not set.
    type: float
  boot:
    description: Where the boot environment is (the inventory's C(p2pfleet_boot)), for a terminal that runs no agent.
    type: dict
    default: {}
    suboptions:
      backend:
        description: The boot mechanism.
        type: str
        choices: [auto, grub, efi, uboot]
        default: auto
      grubenv:
        description: The GRUB environment block.
        type: path
        default: /boot/grub/grubenv
      uboot_config:
        description: The C(fw_env.config) of the U-Boot environment.
        type: path
  state_dir:
    description: The agent's state directory, where the record is (for a terminal that runs no agent).
    type: path
    default: /var/lib/p2pfleet
  socket:
    description: The agent's API socket.
    type: path
    default: /run/p2pfleet/agent.sock
'''

EXAMPLES = r'''
- name: Plan the release and start its fetch into the free slot
  p2pfleet.imaging.reimage:
    step: distribute
    manifest: /var/lib/p2pfleet/manifests/release-2.img.manifest.json
  register: plan

- name: Wait for the agent's verdict (it verified the slot at the end of its fetch)
  p2pfleet.imaging.reimage:
    step: verify
  register: verdict
  until: not verdict.pending
  retries: 720
  delay: 5

- name: Boot the verified slot once, and reboot into it
  p2pfleet.imaging.reimage:
    step: tried
    reboot: true
  register: try_it

- name: Wait for the terminal to come back
  p2pfleet.imaging.reboot_wait:
    boot_id: "{{ try_it.boot_id }}"
  when: try_it.rebooting

- name: Keep the new slot (refused unless it is the slot running now)
  p2pfleet.imaging.reimage:
    step: confirmed

- name: Go back to the old slot after a failed health check
  p2pfleet.imaging.reimage:
    step: rolled_back
    reason: the web check failed
    reboot: true
'''

RETURN = r'''
record:
  description: The terminal's reimage record after the step (null before the first distribute).
  returned: always
  type: dict
  sample: {"info_hash": "5f0c…", "name": "release-2.img", "slot": "B", "device": "/dev/sda3", "phase": "verified",
           "digest": "blake3:9a…", "reason": "", "updated": 1733350000.0}
plan:
  description: What distribute decided (its C(action) is C(fetch), C(verified), C(current) or C(finish_switch)), the slot, and why.
  returned: when O(step=distribute)
  type: dict
  sample: {"action": "fetch", "slot": "B", "device": "/dev/sda3", "reason": "slot B is neither running nor a fallback"}
situation:
  description: The slots now (the one running, the ones a boot falls back to, every slot with its device).
  returned: when the agent can read them
  type: dict
job:
  description: The release's fetch job on the agent, as M(p2pfleet.imaging.swarm_job_info) returns it.
  returned: when there is one
  type: dict
pending:
  description: The agent is still fetching or verifying the slot (O(step=verify)); ask again.
  returned: always
  type: bool
verified:
  description: The slot holds the release, proved by the agent's digest and unchanged since.
  returned: always
  type: bool
reboot:
  description: The step is done only once the terminal reboots (see O(reboot)).
  returned: when O(step) is V(tried) or V(rolled_back)
  type: bool
rebooting:
  description: The module started the terminal's reboot (O(reboot=true) and RV(reboot)).
  returned: always
  type: bool
kept:
  description: O(step=rolled_back) found the slot already the default and running, and recorded it confirmed.
  returned: when O(step=rolled_back)
  type: bool
boot_id:
  description: The terminal's boot id when the step was taken (a new one after every boot).
  returned: always
  type: str
agent:
  description: V(false) when the step was taken by the module itself, on a terminal that runs no agent.
  returned: when no agent answered
  type: bool
reason:
  description: Why the slot is not verified (O(step=verify)), when it is not pending.
  returned: when not verified
  type: str
'''

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.p2pfleet.imaging.plugins.module_utils._agent_client import AgentClient, AgentError
from ansible_collections.p2pfleet.imaging.plugins.module_utils._common import (
    AGENT_ARGS, SLOTS_ARG, deprecate_renamed, renamed, slot_definitions)
from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine import boot, reimage
from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.errors import P2PFleetError

# The fetch's options, by the module's name and the agent's.
FETCH_OPTIONS = ("seed_after", "local_pieces", "stall_timeout")  # passed to the agent as they are
# Steps that need only the record and the slots: on a system with no agent, taken here.
LOCAL_STEPS = ("read", "tried", "confirmed", "rolled_back")


def _without_agent(module, p):
    """The step, by the engine's own rules, on the record of the state partition. Also every
    switch step in check mode, agent or not: the engine's checks and answer, nothing written."""
    store = reimage.Store(p["state_dir"])
    boot = {k: v for k, v in (p["boot"] or {}).items() if v is not None}

    def settings():
        return slot_definitions(p["slots"]), boot

    def read(**more):
        return dict(reimage.describe(store, lambda: reimage.situation(*settings())), changed=False, agent=False,
                    **more)
    reason = " ".join(p["reason"].split())
    try:
        if p["step"] == "read":
            return read()
        if module.check_mode:
            if store.read() is None:
                return read(msg="no reimage on this terminal yet: nothing to switch")
            try:
                answer, changed = reimage.move(store, settings, p["step"], reason, dry_run=True)
            except reimage.ReimageError as exc:  # the stages before would change what this step finds
                return read(msg=f"as the terminal is now: {exc}")
            return dict(answer, changed=changed, agent=False)
        with store.locked():
            answer, changed = reimage.move(store, settings, p["step"], reason)
        return dict(answer, changed=changed, agent=False)
    except P2PFleetError as exc:
        module.fail_json(msg=str(exc))


def main():
    module = AnsibleModule(
        argument_spec=dict(
            step=dict(type="str", choices=["read", "distribute", "verify", "tried", "confirmed", "rolled_back"],
                      default="read"),
            manifest=dict(type="path"),
            reason=dict(type="str", default=""),
            reboot=dict(type="bool", default=False),
            trackers=dict(type="list", elements="str", default=[]),
            peers=dict(type="list", elements="str", default=[]),
            seed_after=dict(type="bool"),
            local_pieces=renamed(dict(type="bool"), "local_sources"),
            stall_timeout=dict(type="float"),
            slots=SLOTS_ARG,
            boot=dict(type="dict", default={}, options=dict(
                backend=dict(type="str", choices=["auto", "grub", "efi", "uboot"], default="auto"),
                grubenv=dict(type="path", default="/boot/grub/grubenv"),
                uboot_config=dict(type="path"))),
            state_dir=dict(type="path", default="/var/lib/p2pfleet"),
            **AGENT_ARGS,
        ),
        required_if=[("step", "distribute", ["manifest"])],
        supports_check_mode=True,
    )
    deprecate_renamed(module, {"local_sources": "local_pieces"})
    p = module.params
    client = AgentClient(p["socket"])
    fetch = {key: p[key] for key in FETCH_OPTIONS if p[key] is not None}
    try:
        boot_id = boot.boot_id()
    except P2PFleetError as exc:
        module.fail_json(msg=str(exc))
    if p["step"] in LOCAL_STEPS and (not os.path.exists(p["socket"]) or (module.check_mode and p["step"] != "read")):
        _finish(module, dict(_without_agent(module, p), boot_id=boot_id))
    try:
        if p["step"] == "read" or module.check_mode:
            answer = dict(client.reimage(), changed=False)
        elif p["step"] == "distribute":
            answer = client.reimage_step("distribute", manifest=p["manifest"], trackers=p["trackers"],
                                         peers=p["peers"], **fetch)
        elif p["step"] == "verify":
            answer = client.reimage_step("verify")
        else:
            answer = client.reimage_step(p["step"], reason=p["reason"])
    except AgentError as exc:
        module.fail_json(msg=str(exc))
    answer.setdefault("pending", False)
    answer.setdefault("verified", (answer.get("record") or {}).get("phase") in ("verified", "tried", "confirmed"))
    if p["step"] == "verify" and not module.check_mode and not answer["verified"] and not answer["pending"]:
        module.fail_json(msg=answer.get("reason") or "the slot is not verified", **answer)
    _finish(module, dict(answer, boot_id=boot_id))


def _finish(module, answer):
    """Return the step's answer; with ``reboot``, reboot when the step says so (after returning)."""
    answer["rebooting"] = False
    if module.params["reboot"] and answer.get("reboot") and not module.check_mode:
        try:
            boot.reboot_soon()
        except P2PFleetError as exc:
            module.fail_json(msg=str(exc), **answer)
        answer["rebooting"] = True
    module.exit_json(**answer)


if __name__ == "__main__":
    main()
