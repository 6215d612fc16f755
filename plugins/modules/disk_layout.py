#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: p2pfleet.imaging contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: disk_layout
short_description: Lay a terminal's disk out as the collection's partitions (boot, slots, state), or find it so
version_added: 0.2.0
description:
  - Writes a GPT with the partitions of O(partitions), in that order, each named by its label (the labels the
    inventory's C(p2pfleet_slots) and the agent find the slots by), aligned to MiB.
  - A disk already laid out so is left alone, whatever it holds and whether or not it runs the system.
  - A disk that holds anything else — a partition table, a file system, an LVM, RAID or LUKS signature, any data in
    its first or last MiB — is refused with one line naming what is there, and nothing is written, unless O(wipe).
  - A disk that holds the running root file system, is mounted, is swap, or carries LVM, RAID or an encrypted
    volume is refused even with O(wipe); prepare a terminal's disk from a system that does not run from it.
  - Before the table, it erases the first and last MiB of the disk and of every new partition (where old partition
    tables and file systems sign themselves), then tells the kernel (C(partx)) and returns each partition's device
    node. Where no udev runs (a container, an initramfs), it makes the nodes itself.
  - It makes no file systems; C(playbooks/prepare.yml) does, and installs the collection's GRUB configuration.
author: p2pfleet maintainers (!UNKNOWN)
extends_documentation_fragment:
  - p2pfleet.imaging.attributes
attributes:
  check_mode:
    support: full
    details:
      - Reads the disk and reports whether the table would be written; every refusal holds in check mode too.
  diff_mode:
    support: full
    details:
      - Shows the partitions before and after (or what else the disk holds).
  idempotent:
    support: full
options:
  disk:
    description: The whole disk, for example V(/dev/sda), V(/dev/nvme0n1) or a V(/dev/disk/by-id/…) link to it.
    type: path
    required: true
  partitions:
    description: The partitions, in order.
    type: list
    elements: dict
    required: true
    suboptions:
      label:
        description: The GPT partition label (name), at most 36 characters.
        type: str
        required: true
      size:
        description:
          - V(512M), V(2G), V(1T); or V(rest) for an equal share of what the partitions with a size leave.
        type: str
        default: rest
      type:
        description: The GPT partition type.
        type: str
        choices: [linux, esp, bios_grub]
        default: linux
  wipe:
    description:
      - Erase a disk that holds something else and lay it out anyway. Everything on it is lost.
      - A disk in use (the running system, mounted, swap, LVM, RAID) is refused even so.
    type: bool
    default: false
seealso:
  - module: p2pfleet.imaging.slot_info
'''

EXAMPLES = r'''
- name: Lay the terminal's disk out for A/B slots (refused if it holds data)
  p2pfleet.imaging.disk_layout:
    disk: /dev/sda
    partitions:
      - {label: boot, size: 512M}
      - {label: system_a}
      - {label: system_b}
      - {label: p2pfleet_state, size: 1G}
  register: layout
  become: true
'''

RETURN = r'''
partitions:
  description: The partitions as laid out (or as they would be, in check mode).
  returned: success
  type: list
  elements: dict
  contains:
    number:
      description: The partition number.
      type: int
    label:
      description: Its label.
      type: str
    device:
      description: Its device node; null in check mode when the partition does not exist yet.
      type: str
    start:
      description: Its first byte on the disk.
      type: int
    size:
      description: Its size in bytes.
      type: int
found:
  description: What the disk held before, in words (V(empty), V(laid out already), or what was wiped).
  returned: success
  type: str
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine import layout
from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.errors import P2PFleetError


def main():
    module = AnsibleModule(
        argument_spec=dict(
            disk=dict(type="path", required=True),
            partitions=dict(type="list", elements="dict", required=True, options=dict(
                label=dict(type="str", required=True),
                size=dict(type="str", default="rest"),
                type=dict(type="str", choices=list(layout.TYPES), default="linux"))),
            wipe=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        disk = layout.inspect(p["disk"])
        laid = layout.plan(disk, layout.parse_parts(p["partitions"]))
        changed = layout.decide(disk, laid, p["wipe"])
        if changed and not module.check_mode:
            layout.write(disk, laid)
        devices = [None] * len(laid) if changed and module.check_mode else \
            layout.nodes(disk, laid, make=not module.check_mode)
    except P2PFleetError as exc:
        module.fail_json(msg=str(exc))
    if not changed:
        found = "laid out already"
    elif disk.entries or disk.found:
        found = "wiped: " + (layout.describe_entries(disk) if disk.entries else ", ".join(disk.found))
    else:
        found = "empty"
    before = layout.table(disk, disk.entries) if disk.entries else (", ".join(disk.found) or "(empty)") + "\n"
    module.exit_json(
        changed=changed, found=found,
        partitions=[dict(number=part["number"], label=part["label"], device=device, start=part["first"] * disk.block,
                         size=(part["last"] - part["first"] + 1) * disk.block) for part, device in zip(laid, devices)],
        diff=dict(before_header=p["disk"], after_header=p["disk"], before=before, after=layout.table(disk, laid)))


if __name__ == "__main__":
    main()
