#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: p2pfleet.imaging contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: fleet_status
short_description: The LAN tracker's view of one image's swarm, for the controller's summary
version_added: 0.1.0
description:
  - Reads the tracker's status of one image's swarm (every terminal's progress, rates and state, and fleet
    totals) over HTTP. Usually run on the controller (C(delegate_to) V(localhost), C(run_once) V(true)),
    in a bounded C(until) loop that prints the whole lab's progress while it distributes.
  - One read per run. A tracker that cannot be read fails the task with one line naming the URL and the cause
    (an C(until) loop retries it). M(p2pfleet.imaging.fleet_wait) waits for the whole lab, drops dead
    terminals and rides out tracker outages by itself.
  - The tracker keeps one row per host (its newest announce); a host bound to two addresses is read from the
    row it announced from last, as in M(p2pfleet.imaging.fleet_wait).
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
    description: The image's info-hash (returned by M(p2pfleet.imaging.image_manifest)).
    type: str
    required: true
  terminals:
    description:
      - Host names the swarm should have complete. When given, RV(done) is true only once every one of them
        reports the whole image, and RV(missing) lists the ones the tracker has not heard of.
    type: list
    elements: str
    default: []
  timeout:
    description: Seconds to wait for the tracker's answer.
    type: float
    default: 10
seealso:
  - module: p2pfleet.imaging.swarm_job_info
  - module: p2pfleet.imaging.fleet_wait
'''

EXAMPLES = r'''
- name: Whole-lab progress, every 15 s, for at most 3 hours
  p2pfleet.imaging.fleet_status:
    url: "http://{{ hostvars[groups['tracker'][0]].ansible_host }}:6969"
    info_hash: "{{ release.info_hash }}"
    terminals: "{{ groups['terminals'] }}"
  delegate_to: localhost
  run_once: true
  register: fleet
  until: fleet.done
  retries: 720
  delay: 15
'''

RETURN = r'''
swarm:
  description: The tracker's status of the swarm, as C(/status/INFO_HASH.json) returns it.
  returned: success
  type: dict
  contains:
    totals:
      description: Fleet totals (peers, terminals, complete, downloading, silent, bytes_left, bytes_fetched, bytes_local, progress, rates).
      type: dict
    peers:
      description:
        - One entry per peer (host, verified, ip, group, state, left, rates, last seen).
        - C(verified) is true when the tracker's hosts map binds the host name to the address the peer
          announces from (the tracker role binds every inventory host); see the tracker's documentation.
      type: list
      elements: dict
progress:
  description: Fraction of the image the terminals hold together (0..1).
  returned: success
  type: float
done:
  description: Every terminal (of O(terminals), or every terminal the tracker knows) has the whole image (a row
    whose job reported a failure never counts).
  returned: success
  type: bool
missing:
  description: Hosts of O(terminals) the tracker has not heard of.
  returned: success
  type: list
  elements: str
'''

import json

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.urls import open_url

from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.tracker.aggregate_log import one_line
from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.tracker.fleet import fleet_done, status_url


def main():
    module = AnsibleModule(
        argument_spec=dict(
            url=dict(type="str", required=True),
            info_hash=dict(type="str", required=True),
            terminals=dict(type="list", elements="str", default=[]),
            timeout=dict(type="float", default=10),
        ),
        supports_check_mode=True,
    )
    p = module.params
    info_hash = p["info_hash"].lower()
    if len(info_hash) != 40 or any(c not in "0123456789abcdef" for c in info_hash):
        module.fail_json(msg=f"info_hash: must be 40 hex digits, got {p['info_hash']!r}")
    url = status_url(p["url"], info_hash)
    try:
        response = open_url(url, timeout=p["timeout"], validate_certs=True)
        swarm = json.loads(response.read())
    except Exception as exc:  # open_url raises many types; the message names the URL and the cause
        status = getattr(exc, "code", None)
        if status == 404:
            module.fail_json(msg=f"{url}: the tracker does not know image {info_hash}")
        module.fail_json(msg=f"{url}: cannot read the tracker's status: {one_line(exc)}")
    # The same row speaks for a terminal, by the same rule, here as in fleet_wait.
    done, missing = fleet_done(swarm, p["terminals"])
    module.exit_json(changed=False, swarm=swarm, progress=swarm.get("totals", {}).get("progress", 0.0),
                     done=done, missing=missing)


if __name__ == "__main__":
    main()
