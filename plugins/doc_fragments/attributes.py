# -*- coding: utf-8 -*-
# Copyright: p2pfleet.imaging contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Documentation shared by the collection's modules."""

from __future__ import annotations


class ModuleDocFragment(object):

    # Every module of the collection: what it supports, declared the same way everywhere.
    DOCUMENTATION = r'''
options: {}
attributes:
  check_mode:
    description: Can run in check mode and return changed status prediction without modifying target.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
  idempotent:
    description:
      - When run twice in a row outside check mode, with the same arguments, the second invocation indicates no change.
      - This assumes that the system controlled/queried by the module has not changed in a relevant way.
'''

    # Modules that only read state.
    INFO_MODULE = r'''
options: {}
attributes:
  check_mode:
    support: full
    details:
      - This action does not modify state.
  diff_mode:
    support: N/A
    details:
      - This action does not modify state.
  idempotent:
    support: full
'''

    # Modules that talk to the local agent.
    AGENT = r'''
options:
  socket:
    description:
      - Path of the agent's API socket on the managed host.
      - The agent is installed and started by the P(p2pfleet.imaging.swarm_client#role) role.
    type: path
    default: /run/p2pfleet/agent.sock
notes:
  - The module talks to the local p2pfleet agent over its root-only Unix socket, so it needs
    root on the managed host (C(become=true)).
  - Image bytes never pass through Ansible; the agents move them between hosts.
'''
