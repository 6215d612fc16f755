#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: p2pfleet.imaging contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: reimage_summary
short_description: One line per terminal and one for the fleet after a reimage run
version_added: 0.2.0
description:
  - Runs on the controller (an action plugin) once, after the terminals reported their reimage with
    M(p2pfleet.imaging.reimage) (O(terminals)' C(p2pfleet_summary), registered with C(ignore_unreachable)), and
    prints each terminal's slot, image, bytes fetched and taken from its own disks, and its outcome with the
    reason; then the fleet's counts.
  - Outcomes are C(switched) (runs the release from the slot it was written to, confirmed), C(rolled back)
    (with why), C(dropped) (left out of distribute by the fleet wait, with why, for example C(silent since 40 %)),
    C(unreachable), C(failed) (a stage failed on it, with the line it failed with), C(not switched) (with why, for
    example not verified, or finishing an earlier switch first) and C(not reimaged).
  - Reads, per terminal, C(p2pfleet_summary) (the M(p2pfleet.imaging.reimage) result), C(p2pfleet_fleet)
    (the M(p2pfleet.imaging.fleet_wait) result with its C(dropped) terminals), C(p2pfleet_verdict) and
    C(p2pfleet_release), as the collection's playbooks register them.
author: p2pfleet maintainers (!UNKNOWN)
extends_documentation_fragment:
  - p2pfleet.imaging.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  idempotent:
    support: full
options:
  terminals:
    description: The terminals to report, in order (usually C(groups['terminals'])).
    type: list
    elements: str
    required: true
  release:
    description: The release's info-hash; by default the one the run's stages found (C(p2pfleet_release)).
    type: str
    default: ""
'''

EXAMPLES = r'''
- name: Reimage summary
  p2pfleet.imaging.reimage_summary:
    terminals: "{{ groups['terminals'] }}"
  register: p2pfleet_report
'''

RETURN = r'''
msg:
  description: The lines printed, one per terminal, then the fleet's.
  returned: always
  type: list
  elements: str
  sample: ["t01          slot B  release-2.img  fetched 120.0 MiB  local 392.0 MiB  switched: runs release-2.img on
           slot B, confirmed", "fleet: 3 of 4 switched, 1 dropped; 360.0 MiB fetched over the network, ..."]
rows:
  description: Each terminal's row by name; C(outcome) and C(why) as in the lines.
  returned: always
  type: dict
switched:
  description: Whether every terminal ended on the release, confirmed.
  returned: always
  type: bool
'''
