#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: p2pfleet.imaging contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: reboot_wait
short_description: Wait for a terminal to come back from a reboot that was already started
version_added: 0.2.0
description:
  - Runs on the controller (an action plugin). Asks the terminal for its boot id over the connection, every
    O(interval) seconds, until it differs from O(boot_id), the one taken before the reboot; the connection is
    started anew after each failed ask.
  - Unlike M(ansible.builtin.reboot) it does not reboot and does not hold one of Ansible's forks while the terminal
    reboots. Start the reboots of a whole batch first (M(p2pfleet.imaging.reimage) with
    O(p2pfleet.imaging.reimage#module:reboot=true)), then wait for them with this task. A terminal that came back
    while the forks were busy is found back at the first ask, so a batch of any size takes about one reboot,
    whatever the forks.
  - Needs no Python on the terminal (it runs C(cat /proc/sys/kernel/random/boot_id)).
author: p2pfleet maintainers (!UNKNOWN)
extends_documentation_fragment:
  - p2pfleet.imaging.attributes
attributes:
  check_mode:
    support: full
    details:
      - In check mode it returns at once (skipped), as no reboot was started.
  diff_mode:
    support: none
  idempotent:
    support: full
options:
  boot_id:
    description: The terminal's boot id before the reboot (RV(p2pfleet.imaging.reimage#module:boot_id)).
    type: str
    required: true
  timeout:
    description: Seconds to wait for the new boot before the task fails.
    type: int
    default: 600
  interval:
    description: Seconds between two asks.
    type: float
    default: 2.0
'''

EXAMPLES = r'''
- name: Boot the verified slot once, and reboot into it
  p2pfleet.imaging.reimage:
    step: tried
    reboot: true
  register: try_it

- name: Wait for the terminal to come back
  p2pfleet.imaging.reboot_wait:
    boot_id: "{{ try_it.boot_id }}"
    timeout: 900
  when: try_it.rebooting
'''

RETURN = r'''
boot_id:
  description: The terminal's new boot id.
  returned: success
  type: str
elapsed:
  description: Seconds waited.
  returned: always
  type: float
'''
