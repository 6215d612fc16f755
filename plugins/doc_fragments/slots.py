# -*- coding: utf-8 -*-
# Copyright: p2pfleet.imaging contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The slot definitions, documented once for every module that takes them."""

from __future__ import annotations


class ModuleDocFragment(object):

    DOCUMENTATION = r'''
options:
  slots:
    description:
      - The slot definitions, usually the inventory's C(p2pfleet_slots).
      - Each slot is found by exactly one of O(slots[].partlabel), O(slots[].partuuid), O(slots[].device).
        A label or UUID carried by two partitions (a cloned disk, a USB stick made from an image) is an error
        naming both devices; the GPT of every disk is read for it, since C(/dev/disk/by-partlabel) shows only one.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description: The slot's name, for example V(A).
        type: str
        required: true
      partlabel:
        description: GPT partition label (name).
        type: str
      partuuid:
        description: GPT partition unique GUID.
        type: str
      device:
        description: Device path.
        type: path
      boot_entry:
        description:
          - The boot loader's entry for this slot (GRUB menu entry id, UEFI boot entry label or number, U-Boot slot
            name). Without it, the slot's name is the entry.
        type: str
'''
