#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: p2pfleet.imaging contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: slot_info
short_description: The host's A/B slots, which one is booted, which one may be written
version_added: 0.1.0
description:
  - Finds each slot's partition from the inventory's slot definitions (partition label, partition UUID or
    device path), with its size, tells which slot holds the running root file system (booted) and which
    one is inactive, and reads what the boot environment will boot next.
  - Refuses definitions that do not match the disk, naming the slot; a label that resolves to nothing, a label
    or UUID found on two partitions (naming both devices), two slots on one partition, a slot that is not a block
    device; and, with O(slot), a slot to be written that is the running root or smaller than O(image_size).
  - Partition labels are found through C(/dev/disk/by-partlabel) and by reading the GPT of every disk (the
    link names only one of two partitions with the same label, and there is none where udev does not run).
author: p2pfleet maintainers (!UNKNOWN)
extends_documentation_fragment:
  - p2pfleet.imaging.attributes
  - p2pfleet.imaging.attributes.INFO_MODULE
  - p2pfleet.imaging.slots
options:
  boot:
    description: Where the boot environment is, usually the inventory's C(p2pfleet_boot).
    type: dict
    suboptions:
      backend:
        description: The boot mechanism. Only V(grub) is read by this module.
        type: str
        choices: [grub]
        default: grub
      grubenv:
        description: Path of the GRUB environment block on the host.
        type: path
        default: /boot/grub/grubenv
  slot:
    description:
      - The name of the slot about to be written. The module fails if it is the booted slot.
      - Its old name O(target) is deprecated and goes in release 0.3.0.
    type: str
    aliases: [target]
    version_added: 0.2.0
  image_size:
    description: With O(slot), bytes of the image to be written; the module fails if the slot is smaller.
    type: int
seealso:
  - module: p2pfleet.imaging.swarm_job
'''

EXAMPLES = r'''
- name: Find the slots, fail early if the inactive one cannot take release 2
  p2pfleet.imaging.slot_info:
    slots: "{{ p2pfleet_slots }}"
    boot: "{{ p2pfleet_boot }}"
  register: slots
  become: true

- name: Fetch into the inactive slot
  p2pfleet.imaging.swarm_job:
    manifest: /var/lib/p2pfleet/manifests/release-2.img.manifest.json
    target: "{{ slots.inactive.device }}"
  become: true
'''

RETURN = r'''
slots:
  description: Every slot with the device found for it.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: The slot's name.
      type: str
    device:
      description: The partition's device node.
      type: str
    size:
      description: Bytes of the partition.
      type: int
    booted:
      description: Whether this slot holds the running root file system.
      type: bool
booted:
  description: The booted slot (null when no slot holds the running root, for example on a rescue system).
  returned: always
  type: dict
inactive:
  description: The slot a new image may be written into (null unless exactly one slot is booted of two).
  returned: always
  type: dict
boot_env:
  description: The boot environment's variables (for GRUB, C(saved_entry) and C(next_entry) among them).
  returned: when O(boot) is given
  type: dict
next_boot:
  description: The slot the boot loader will start next, by the collection's boot rule (next_entry, else saved_entry, else the first slot).
  returned: when O(boot) is given
  type: str
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.p2pfleet.imaging.plugins.module_utils._common import (
    SLOTS_ARG, deprecate_renamed, renamed, slot_definitions)
from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine import boot, slots as engine_slots
from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.errors import P2PFleetError
from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.image import refuse_too_small


def _next_boot(found, env):
    """The engine's rule (the one-shot, else the default) over the entries that name a slot;
    the first slot when neither does."""
    names = {s.entry: s.name for s in found}
    known = {key: env[key] for key in ("next_entry", "saved_entry") if env.get(key) in names}
    state = boot.BootState("grub", default=known.get("saved_entry"), pending=known.get("next_entry"))
    return names.get(state.next_boot(), found[0].name)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            slots=SLOTS_ARG,
            boot=dict(type="dict", options=dict(
                backend=dict(type="str", choices=["grub"], default="grub"),
                grubenv=dict(type="path", default="/boot/grub/grubenv"))),
            slot=renamed(dict(type="str"), "target"),
            image_size=dict(type="int"),
        ),
        supports_check_mode=True,
    )
    deprecate_renamed(module, {"target": "slot"})
    p = module.params
    definitions = slot_definitions(p["slots"])
    try:
        found = engine_slots.resolve_slots(definitions)
        booted, inactive = engine_slots.booted_and_inactive(found)
        result = dict(changed=False, slots=[s.as_dict() for s in found],
                      booted=booted.as_dict() if booted else None, inactive=inactive.as_dict() if inactive else None)
        if p["slot"] is not None:
            slot = [s for s in found if s.name == p["slot"]]
            if not slot:
                module.fail_json(msg=f"slot: no slot is named {p['slot']!r}", **result)
            engine_slots.refuse_booted(slot[0])
            if p["image_size"] is not None:
                refuse_too_small(slot[0].device, slot[0].size, p["image_size"])
        if p["boot"]:
            env = boot.read_grub_env(p["boot"]["grubenv"])
            result.update(boot_env=env, next_boot=_next_boot(found, env))
    except P2PFleetError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
