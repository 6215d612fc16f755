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
    whole lab every O(report_every) seconds (percent, terminals done and dropped, bytes, rate, ETA, terminals
    not heard from), and one line at once for each event (a terminal dropped, the tracker away or back), until
    every terminal of O(terminals) that was not dropped holds the whole image.
  - Small, steady output, made for AWX and CI logs; never pages of retry lines.
  - A terminal that makes no progress (no announce, or no change in what it holds) for O(drop_after) seconds
    while other terminals progress or are done is B(dropped) from the wait, not a failure of the task, and
    named in RV(dropped) with the reason (C(silent since 40 % \(12:03:10\)), C(no progress since 40 % for
    310 s), C(never announced), C(failed at 40 % ...)). One whose job reports a failure during the wait is
    dropped at once. A dropped terminal that gets the whole image before the wait ends counts as done.
  - Fails with one line when the whole fleet stalls (no terminal progressed for O(stall_timeout) seconds),
    naming what went away (the origin seeder's row silent, stopped, failed or missing) rather than the
    terminals that waited for it; when every terminal was dropped; when the tracker stayed unreachable for
    more than O(tracker_grace) seconds (C(tracker unreachable since 12:03:10 ...)); and after O(timeout)
    seconds when that is set. The transfers go on in the agents; re-running the play picks them up.
  - While the tracker cannot be read the wait retries every O(interval) seconds, prints C(tracker unreachable
    since ...), and neither drops terminals nor counts a stall for that time.
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
    description:
      - Seconds to wait at most, an optional cap (0 = no overall limit; the stall and drop rules end the wait).
      - The default was 7200 before 0.2.0.
    type: int
    default: 0
  stall_timeout:
    description:
      - Seconds without progress of any terminal before the wait fails as a stall of the whole fleet (0 = never).
      - Keep it above O(drop_after), or a single dead terminal among finished ones fails the wait as a stall
        before it can be dropped.
    type: int
    default: 600
  drop_after:
    description:
      - Seconds a terminal may make no progress (or never announce, counted from the start) while other
        terminals progress or are done, before it is dropped from the wait (0 = never drop; wait for every
        terminal).
    type: int
    default: 300
    version_added: 0.2.0
  tracker_grace:
    description:
      - Seconds the tracker may stay unreachable (refused, timed out, an HTTP error) before the wait fails.
        Meanwhile it retries every O(interval) seconds. 0 fails at the first failed read.
    type: int
    default: 300
    version_added: 0.2.0
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
- name: Wait for the whole lab, with a progress line every 30 s; leave out terminals silent for 5 minutes
  p2pfleet.imaging.fleet_wait:
    url: "http://{{ hostvars[groups['tracker'][0]].ansible_host }}:6969"
    info_hash: "{{ release.info_hash }}"
    terminals: "{{ groups['terminals'] }}"
    drop_after: 300
    report_every: 30
  run_once: true
  register: fleet

- name: Go on with the terminals that hold the image
  ansible.builtin.add_host:
    name: "{{ item }}"
    groups: has_release
  loop: "{{ fleet.done }}"
'''

RETURN = r'''
done:
  description:
    - The terminals that hold the whole image, in the order they got it.
    - A boolean (always true on success) before 0.2.0.
  returned: always
  type: list
  elements: str
  version_added: 0.2.0
dropped:
  description: Terminals dropped from the wait, each with a one-line reason.
  returned: always
  type: dict
  sample: {"pc-107": "silent since 40 % (12:03:10)", "pc-112": "never announced"}
  version_added: 0.2.0
missing:
  description: Terminals the tracker had no row of during the whole wait (powered off, no agent, wrong address).
  returned: always
  type: list
  elements: str
  version_added: 0.2.0
seconds:
  description: Seconds waited.
  returned: success
  type: float
mib_per_second:
  description: Image bytes delivered to the terminals done per second while waiting (all of them together).
  returned: success
  type: float
swarm:
  description: The tracker's last status of the swarm.
  returned: always
  type: dict
'''
