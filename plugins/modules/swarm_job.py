#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: p2pfleet.imaging contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: swarm_job
short_description: Ensure a seed or fetch job of an image on the host's p2pfleet agent
version_added: 0.1.0
description:
  - Puts a job on the local agent and returns at once with its progress. A fetch job downloads an image
    straight into a target partition from the lab's swarm, verifies it, and (by default) keeps seeding it
    to the other terminals. A seed job serves an image from a file or partition.
  - Idempotent, as the agent decides it and the module passes on. The same job again (same manifest, same
    target) is found, not started again, and reported unchanged; a job that was stopped or failed is started
    again, resuming from the pieces it had; a verified fetch put again with O(seed_after) seeds.
  - Dangerous targets are refused by the agent with one line, and nothing is written; a mounted partition,
    the running root file system, a partition smaller than the image, a whole disk, another job's target.
  - Long transfers should not be waited for in one task (AWX and SSH time out); use
    M(p2pfleet.imaging.swarm_job_info) in a bounded C(until) loop instead. O(wait) is for small images.
author: p2pfleet maintainers (!UNKNOWN)
extends_documentation_fragment:
  - p2pfleet.imaging.attributes
  - p2pfleet.imaging.attributes.AGENT
attributes:
  check_mode:
    support: full
    details:
      - Reports whether the job would be put, stopped or removed, as the agent answers a dry run; nothing changes.
  diff_mode:
    support: full
    details:
      - Shows the job's state before and after.
  idempotent:
    support: full
options:
  manifest:
    description: Path of the image's manifest on the managed host (the torrent lies beside it).
    type: path
    required: true
  action:
    description: V(fetch) downloads the image into O(target); V(seed) serves it from O(image).
    type: str
    choices: [fetch, seed]
    default: fetch
  target:
    description: For V(fetch), the partition (or image file) to write. Required for V(fetch).
    type: path
  image:
    description: For V(seed), the file or partition holding the image. Required for V(seed).
    type: path
  state:
    description:
      - V(present) ensures the job exists (and runs, unless it is finished).
      - V(stopped) stops it, saving its resume data and releasing its target; it stays listed.
      - V(absent) stops it and forgets it (record and resume data removed; the target is left as it is).
    type: str
    choices: [present, stopped, absent]
    default: present
  trackers:
    description: Announce URLs. Defaults to the trackers in the agent's config.
    type: list
    elements: str
    default: []
  peers:
    description: Peers to connect to directly, as C(HOST:PORT), besides those the tracker names.
    type: list
    elements: str
    default: []
  seed_after:
    description: After a fetch is verified, keep seeding it to the others. Defaults to the agent's config.
    type: bool
  stall_timeout:
    description: Seconds without progress before the job shows C(stalled) (it keeps trying). Defaults to the agent's config.
    type: float
  require_device:
    description: For V(fetch), refuse unless O(target) is a block device.
    type: bool
    default: true
  local_pieces:
    description:
      - For V(fetch), take every piece the host already holds from its own disks before joining the swarm
        (the target's unchanged pieces, zero pieces, pieces of the other slot); only the rest crosses the network.
      - Every piece taken locally is checked against the manifest first. Defaults to the agent's config.
      - Its old name O(local_sources) is deprecated and goes in release 0.3.0.
    type: bool
    aliases: [local_sources]
    version_added: 0.2.0
  check_target:
    description:
      - For V(fetch), when to read the target for pieces already there. V(auto) does where no slot ledger
        vouches for the target and the disk reads faster than the link. Defaults to the agent's config.
    type: str
    choices: [auto, always, never]
  super_seeding:
    description: For V(seed), hand each peer distinct pieces.
    type: bool
    default: false
  wait:
    description: Wait until the fetch is verified (or the seed is serving) before returning.
    type: bool
    default: false
  wait_timeout:
    description: Seconds O(wait) waits at most; then the module fails, and the job goes on.
    type: int
    default: 600
seealso:
  - module: p2pfleet.imaging.swarm_job_info
  - module: p2pfleet.imaging.image_manifest
'''

EXAMPLES = r'''
- name: Fetch release 2 into slot B from the lab's swarm
  p2pfleet.imaging.swarm_job:
    manifest: /var/lib/p2pfleet/manifests/release-2.img.manifest.json
    target: "{{ slots.inactive.device }}"
  become: true

- name: Fetch every byte from the swarm, ignoring what the terminal's disks already hold
  p2pfleet.imaging.swarm_job:
    manifest: /var/lib/p2pfleet/manifests/release-2.img.manifest.json
    target: "{{ slots.inactive.device }}"
    local_pieces: false
  become: true

- name: Seed release 2 from the server
  p2pfleet.imaging.swarm_job:
    action: seed
    manifest: /srv/images/release-2.img.manifest.json
    image: /srv/images/release-2.img
  become: true

- name: Stop seeding once the lab is done
  p2pfleet.imaging.swarm_job:
    action: seed
    manifest: /srv/images/release-2.img.manifest.json
    image: /srv/images/release-2.img
    state: absent
  become: true
'''

RETURN = r'''
job:
  description: The job as the agent reports it (absent after O(state=absent)).
  returned: when the job exists
  type: dict
  contains:
    id:
      description: The job's id, the image's info-hash.
      type: str
    state:
      description: >-
        One of claimed, local, checking, downloading, stalled, flushing, verifying, repairing, verified,
        seeding, failed, stopped. V(local) takes the pieces the host already holds from its disks.
      type: str
    percent:
      description: Percent of the image on the target.
      type: float
    bytes_done:
      description: Bytes of the image on the target.
      type: int
    bytes_total:
      description: Bytes of the image.
      type: int
    download_rate:
      description: Bytes per second received over the last seconds.
      type: int
    upload_rate:
      description: Bytes per second sent over the last seconds.
      type: int
    resumed_bytes:
      description: Bytes found already there when the job started.
      type: int
    downloaded:
      description: Bytes of image received from the swarm (what crossed the network).
      type: int
    local_bytes:
      description: Bytes taken from the host's own disks instead of the network (kept + zero + copied).
      type: int
    kept_bytes:
      description: Bytes already correct in the target (its slot ledger, or the in-place check).
      type: int
    zero_bytes:
      description: Bytes of zero pieces filled locally.
      type: int
    copied_bytes:
      description: Bytes copied from another slot of the host, each piece checked first.
      type: int
    rejected_pieces:
      description: Local pieces that failed their check (a slot changed since its ledger was written); fetched instead.
      type: int
    digest:
      description: Whole-image digest, once verified.
      type: str
    error:
      description: Why the job failed.
      type: str
  sample: {"id": "3f78...", "state": "downloading", "percent": 41.5, "bytes_done": 111400000}
'''

import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.p2pfleet.imaging.plugins.module_utils._agent_client import AgentClient, AgentError
from ansible_collections.p2pfleet.imaging.plugins.module_utils._common import (
    AGENT_ARGS, deprecate_renamed, read_manifest_header, renamed)


def _same(job, p):
    path = p["target"] if p["action"] == "fetch" else p["image"]
    return job["action"] == p["action"] and job["path"] == path


def _put(client, p, dry_run):
    options = dict(trackers=p["trackers"], peers=p["peers"], dry_run=dry_run)
    if p["action"] == "fetch":
        options["require_device"] = p["require_device"]
        for key in ("seed_after", "stall_timeout", "local_pieces", "check_target"):
            if p[key] is not None:
                options[key] = p[key]
        return client.put_fetch(p["manifest"], p["target"], **options)
    return client.put_seed(p["manifest"], p["image"], super_seeding=p["super_seeding"], **options)


def _wait(module, client, job_id, timeout):
    deadline = time.monotonic() + timeout
    while True:
        job = client.job(job_id)
        if job is None or job["state"] in ("verified", "seeding", "failed", "stopped"):
            return job
        if time.monotonic() > deadline:
            module.fail_json(msg=f"job {job_id[:12]} is still {job['state']} at {job['percent']} % after "
                                 f"{timeout} s; it goes on in the agent", job=job)
        time.sleep(1)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            manifest=dict(type="path", required=True),
            action=dict(type="str", choices=["fetch", "seed"], default="fetch"),
            target=dict(type="path"),
            image=dict(type="path"),
            state=dict(type="str", choices=["present", "stopped", "absent"], default="present"),
            trackers=dict(type="list", elements="str", default=[]),
            peers=dict(type="list", elements="str", default=[]),
            seed_after=dict(type="bool"),
            stall_timeout=dict(type="float"),
            require_device=dict(type="bool", default=True),
            local_pieces=renamed(dict(type="bool"), "local_sources"),
            check_target=dict(type="str", choices=["auto", "always", "never"]),
            super_seeding=dict(type="bool", default=False),
            wait=dict(type="bool", default=False),
            wait_timeout=dict(type="int", default=600),
            **AGENT_ARGS,
        ),
        required_if=[("action", "fetch", ["target"]), ("action", "seed", ["image"])],
        supports_check_mode=True,
    )
    deprecate_renamed(module, {"local_sources": "local_pieces"})
    p = module.params
    client = AgentClient(p["socket"])
    check = module.check_mode
    before = None
    try:
        header = read_manifest_header(p["manifest"])
        before = client.job(header["info_hash"])
        if p["state"] == "present":
            # The agent decides whether the put changes anything, and refuses a clash; in
            # check mode it only says what it would do (a dry run).
            answer = _put(client, p, dry_run=check)
            changed, after = answer["changed"], before if check else answer["job"]
            if p["wait"] and not check:
                after = _wait(module, client, header["info_hash"], p["wait_timeout"])
        elif before is None:
            changed, after = False, None
        elif not _same(before, p):
            module.fail_json(msg=f"image {header['name']} already has a {before['action']} job on this host, on "
                                 f"{before['path']}; remove it first", job=before)
        elif p["state"] == "stopped":
            answer = client.stop(header["info_hash"], dry_run=check)
            changed, after = answer["changed"], answer["job"]
        else:
            changed = client.remove(header["info_hash"], dry_run=check)["changed"]
            after = before if check else None
    except (AgentError, ValueError) as exc:
        module.fail_json(msg=str(exc), **({"job": before} if before is not None else {}))
    result = dict(changed=changed, diff=dict(before=_brief(before), after=_brief(after)))
    if after is not None:
        result["job"] = after
        if after["state"] == "failed" and p["state"] == "present":
            module.fail_json(msg=f"job {after['name']} failed: {after['error']}", **result)
    module.exit_json(**result)


def _brief(job):
    return {"state": job["state"], "path": job["path"]} if job else {}


if __name__ == "__main__":
    main()
