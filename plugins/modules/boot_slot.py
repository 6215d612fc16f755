#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: p2pfleet.imaging contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: boot_slot
short_description: Make a terminal boot a slot once, confirm it, or reject it
version_added: 0.1.0
description:
  - Switches the slot a terminal boots, safely, in two steps. V(next) boots the slot once, at the next boot
    only; any later boot (a crash, a power cut, a failed health check followed by a reboot) goes back to the
    confirmed slot. V(confirmed) makes the slot the default, once it came back healthy. V(rejected) drops a
    pending one-shot boot of the slot.
  - Works with GRUB (environment block through C(grub-editenv), plus a default file read before it so that an
    empty or damaged block still boots the confirmed slot), UEFI (C(efibootmgr) C(BootNext) and C(BootOrder))
    and U-Boot (C(fw_setenv)). The backend is detected, or set per host.
  - Refuses to reject the confirmed slot, so a terminal always keeps a bootable default.
  - Refuses V(confirmed) for a slot that is not the one booted now (the slot holding the running root file system,
    as M(p2pfleet.imaging.slot_info) reports it), since a default that never booted leaves the terminal one reboot
    away from unbootable. O(force) overrides this.
  - Refuses V(next) and V(confirmed) when a slot's partition is missing, or its label is found on two partitions;
    V(rejected) is allowed even then, as it only drops a pending one-shot boot.
  - A refusal is one line naming the slot and why, and the boot environment is left as it was.
author: p2pfleet maintainers (!UNKNOWN)
extends_documentation_fragment:
  - p2pfleet.imaging.attributes
  - p2pfleet.imaging.slots
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details:
      - Shows the boot state (default, pending one-shot) before and after.
  idempotent:
    support: full
options:
  slot:
    description: Name of the slot, as in O(slots).
    type: str
    required: true
  state:
    description: V(next) boots the slot once; V(confirmed) makes it the default; V(rejected) drops a pending try.
    type: str
    choices: [next, confirmed, rejected]
    required: true
  backend:
    description: The boot mechanism. V(auto) uses GRUB when O(grubenv) exists, else UEFI, else U-Boot.
    type: str
    choices: [auto, grub, efi, uboot]
    default: auto
  grubenv:
    description: The GRUB environment block.
    type: path
    default: /boot/grub/grubenv
  uboot_config:
    description: The C(fw_env.config) of U-Boot's environment (default, the tools' own).
    type: path
  force:
    description:
      - With O(state=confirmed), confirm the slot even though it is not the slot booted now.
      - B(Dangerous.) The terminal's next boot, and every boot after a failed one-shot try, goes to that slot;
        if its image does not boot, nothing falls back and the terminal needs hands at the console. Meant for
        a rescue system, on a slot known to boot. A missing or ambiguous partition is refused even so.
    type: bool
    default: false
    version_added: 0.1.0
seealso:
  - module: p2pfleet.imaging.slot_info
'''

EXAMPLES = r'''
- name: Boot slot B once
  p2pfleet.imaging.boot_slot:
    slot: B
    slots: "{{ p2pfleet_slots }}"
    state: next
  become: true

- name: Reboot into it
  ansible.builtin.reboot:

- name: It came back healthy on B; keep it (refused unless B is the slot running now)
  p2pfleet.imaging.boot_slot:
    slot: B
    slots: "{{ p2pfleet_slots }}"
    state: confirmed
  become: true

- name: From a rescue system, make A the default although it is not running (dangerous)
  p2pfleet.imaging.boot_slot:
    slot: A
    slots: "{{ p2pfleet_slots }}"
    state: confirmed
    force: true
  become: true
'''

RETURN = r'''
backend:
  description: The backend used.
  returned: success
  type: str
  sample: grub
entry:
  description: The boot loader's entry of the slot.
  returned: success
  type: str
  sample: B
before:
  description: The boot state before; C(default) (the confirmed entry), C(pending) (the one-shot entry), C(current).
  returned: success
  type: dict
after:
  description: The boot state after (as it would be, in check mode).
  returned: success
  type: dict
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.p2pfleet.imaging.plugins.module_utils._common import SLOTS_ARG, slot_definitions
from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine import boot
from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.errors import P2PFleetError
from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.slots import boot_entry, check_definitions

ACTIONS = {"next": "try_next", "confirmed": "confirm", "rejected": "reject"}


def _predicted(before, state, entry):
    if state == "next":
        return dict(before, pending=entry)
    if state == "confirmed":
        return dict(before, default=entry, pending=None)
    return dict(before, pending=None if before["pending"] == entry else before["pending"])


def main():
    module = AnsibleModule(
        argument_spec=dict(
            slot=dict(type="str", required=True),
            slots=SLOTS_ARG,
            state=dict(type="str", choices=list(ACTIONS), required=True),
            backend=dict(type="str", choices=list(boot.BACKENDS), default="auto"),
            grubenv=dict(type="path", default=boot.DEFAULT_GRUBENV),
            uboot_config=dict(type="path"),
            force=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    p = module.params
    definitions = slot_definitions(p["slots"])
    try:
        check_definitions(definitions)
        named = [d for d in definitions if d["name"] == p["slot"]]
        if not named:
            module.fail_json(msg=f"slot: {p['slot']!r} is not one of the slots ({', '.join(d['name'] for d in definitions)})")
        entry = boot_entry(named[0])
        boot.check_change(definitions, p["slot"], p["state"], force=p["force"])
        backend = boot.backend(p["backend"], grubenv=p["grubenv"], uboot_config=p["uboot_config"])
        before = backend.query().as_dict()
        changed = getattr(backend, ACTIONS[p["state"]])(entry, dry_run=module.check_mode)
        after = _predicted(before, p["state"], entry) if module.check_mode else backend.query().as_dict()
    except P2PFleetError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(changed=changed, backend=backend.name, entry=entry, before=before, after=after,
                     diff=dict(before=before, after=after))


if __name__ == "__main__":
    main()
