#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: p2pfleet.imaging contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: fleet_wait
short_description: Wait on the controller until every terminal holds an image, printing the whole lab's progress
version_added: 0.1.0
description:
  - Follows one image's swarm on the LAN tracker from the controller and prints one progress line for the
    whole lab every O(report_every) seconds (percent, terminals done, bytes, rate, ETA, terminals not heard
    from), until every terminal of O(terminals) holds the whole image.
  - Small, steady output, made for AWX and CI logs; never pages of retry lines.
  - Fails after O(timeout), or after O(stall_timeout) without any progress, naming the terminals still
    missing. The transfers go on in the agents; re-running the play picks them up.
  - This is an action plugin; it runs on the controller whatever host the task targets.
  - A bad option (not a number, out of range, a name that is no host name) fails the task at once with one
    line naming the option.
author: p2pfleet maintainers (!UNKNOWN)
extends_documentation_fragment:
  - p2pfleet.imaging.attributes
  - p2pfleet.imaging.attributes.INFO_MODULE
options:
  url:
    description: Base URL of the tracker, for example V(http://10.20.0.1:6969).
    type: str
    required: true
  info_hash:
    description: The image's info-hash.
    type: str
    required: true
  terminals:
    description:
      - Inventory names of the terminals that must hold the image (the tracker knows agents by these).
      - A list, or one string of names separated by commas. At least one.
    type: list
    elements: str
    required: true
  timeout:
    description: Seconds to wait at most (0 or more).
    type: int
    default: 7200
  stall_timeout:
    description: Seconds without any progress before giving up (0 = never).
    type: int
    default: 600
  interval:
    description: Seconds between two reads of the tracker (more than 0, at most 86400).
    type: float
    default: 2
  report_every:
    description: Seconds between two progress lines (more than 0, at most 86400).
    type: float
    default: 10
seealso:
  - module: p2pfleet.imaging.fleet_status
'''

EXAMPLES = r'''
- name: Wait for the whole lab, with a progress line every 30 s
  p2pfleet.imaging.fleet_wait:
    url: "http://{{ hostvars[groups['tracker'][0]].ansible_host }}:6969"
    info_hash: "{{ release.info_hash }}"
    terminals: "{{ groups['terminals'] }}"
    report_every: 30
  run_once: true
'''

RETURN = r'''
done:
  description: Every terminal holds the image.
  returned: success
  type: bool
seconds:
  description: Seconds waited.
  returned: success
  type: float
mib_per_second:
  description: Image bytes delivered to the terminals per second while waiting (all terminals together).
  returned: success
  type: float
swarm:
  description: The tracker's last status of the swarm.
  returned: always
  type: dict
'''
