#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: p2pfleet.imaging contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: swarm_job_info
short_description: Progress of the jobs on the host's p2pfleet agent
version_added: 0.1.0
description:
  - Reads the jobs of the local agent with their progress. Made for bounded C(until) loops in playbooks,
    so that no task waits silently for an hour.
author: p2pfleet maintainers (!UNKNOWN)
extends_documentation_fragment:
  - p2pfleet.imaging.attributes
  - p2pfleet.imaging.attributes.INFO_MODULE
  - p2pfleet.imaging.attributes.AGENT
options:
  manifest:
    description: Only the job of this image (path of its manifest on the managed host).
    type: path
  id:
    description: Only the job with this id (the image's info-hash).
    type: str
seealso:
  - module: p2pfleet.imaging.swarm_job
'''

EXAMPLES = r'''
- name: Wait for the fetch into slot B, checking every 10 s for at most 2 hours
  p2pfleet.imaging.swarm_job_info:
    manifest: /var/lib/p2pfleet/manifests/release-2.img.manifest.json
  register: progress
  until: progress.done
  retries: 720
  delay: 10
  become: true
'''

RETURN = r'''
jobs:
  description: The jobs (one when O(manifest) or O(id) is given and the job exists), as M(p2pfleet.imaging.swarm_job) returns them.
  returned: always
  type: list
  elements: dict
job:
  description: The one job asked for, or null when the agent has no such job.
  returned: when O(manifest) or O(id) is given
  type: dict
done:
  description: True when every job listed is verified or seeding (and at least one is listed).
  returned: always
  type: bool
failed_jobs:
  description: Jobs in state failed, each with its error.
  returned: always
  type: list
  elements: dict
states:
  description: Number of jobs in each state.
  returned: always
  type: dict
  sample: {"downloading": 1, "seeding": 1}
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.p2pfleet.imaging.plugins.module_utils._agent_client import AgentClient, AgentError
from ansible_collections.p2pfleet.imaging.plugins.module_utils._common import AGENT_ARGS, read_manifest_header


def main():
    module = AnsibleModule(
        argument_spec=dict(manifest=dict(type="path"), id=dict(type="str"), **AGENT_ARGS),
        mutually_exclusive=[("manifest", "id")],
        supports_check_mode=True,
    )
    p = module.params
    client = AgentClient(p["socket"])
    result = dict(changed=False)
    try:
        job_id = read_manifest_header(p["manifest"])["info_hash"] if p["manifest"] else p["id"]
        if job_id:
            job = client.job(job_id)
            jobs = [job] if job else []
            result["job"] = job
        else:
            jobs = client.jobs()
    except (AgentError, ValueError) as exc:
        module.fail_json(msg=str(exc))
    states = {}
    for job in jobs:
        states[job["state"]] = states.get(job["state"], 0) + 1
    result.update(
        jobs=jobs, states=states,
        done=bool(jobs) and all(job["state"] in ("verified", "seeding") for job in jobs),
        failed_jobs=[{"id": j["id"], "name": j["name"], "error": j["error"]} for j in jobs if j["state"] == "failed"],
    )
    module.exit_json(**result)


if __name__ == "__main__":
    main()
