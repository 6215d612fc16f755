#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: p2pfleet.imaging contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: image_verify
short_description: Prove that a slot holds an image, by its whole-image digest
version_added: 0.1.0
description:
  - Streams exactly the image's bytes from the target (a slot's partition, or an image file) through the
    manifest's whole-image digest and fails unless it matches. On a mismatch, the wrong pieces are counted, so
    a re-run of the distribution fetches only those.
  - The gate before a terminal is switched to a slot. Refuses a target that is mounted or holds the running
    root file system (its bytes change under the check).
  - Reads only; the result is the same in check mode.
author: p2pfleet maintainers (!UNKNOWN)
extends_documentation_fragment:
  - p2pfleet.imaging.attributes
  - p2pfleet.imaging.attributes.INFO_MODULE
options:
  manifest:
    description: Path of the image's manifest on the managed host.
    type: path
    required: true
  target:
    description: The partition (or file) to check.
    type: path
    required: true
  pieces:
    description: On a mismatch, also find which pieces are wrong (a second read).
    type: bool
    default: true
notes:
  - A manifest with a C(blake3) digest needs the C(blake3) Python module; run the task with the agent's
    virtualenv as interpreter (C(ansible_python_interpreter=/opt/p2pfleet/venv/bin/python)), which has it.
seealso:
  - module: p2pfleet.imaging.swarm_job
  - module: p2pfleet.imaging.boot_slot
'''

EXAMPLES = r'''
- name: Verify slot B before switching to it
  p2pfleet.imaging.image_verify:
    manifest: /var/lib/p2pfleet/manifests/release-2.img.manifest.json
    target: "{{ slots.inactive.device }}"
  become: true
  vars:
    ansible_python_interpreter: /opt/p2pfleet/venv/bin/python
'''

RETURN = r'''
verified:
  description: Whether the target holds the image.
  returned: always
  type: bool
digest:
  description: The digest found on the target, as C(ALGORITHM:HEX).
  returned: success
  type: str
bytes:
  description: Bytes read.
  returned: success
  type: int
seconds:
  description: Seconds the check took.
  returned: success
  type: float
mib_per_second:
  description: Read speed of the check.
  returned: success
  type: float
bad_pieces:
  description: Number of wrong pieces (with O(pieces)).
  returned: on a mismatch
  type: int
first_bad_pieces:
  description: Indexes of the first wrong pieces (at most 20).
  returned: on a mismatch
  type: list
  elements: int
'''

import os
import stat
import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine import image, verify
from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.errors import P2PFleetError
from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.metainfo import Manifest


def main():
    module = AnsibleModule(
        argument_spec=dict(
            manifest=dict(type="path", required=True),
            target=dict(type="path", required=True),
            pieces=dict(type="bool", default=True),
        ),
        supports_check_mode=True,
    )
    p = module.params
    started = time.monotonic()
    try:
        manifest = Manifest.load(p["manifest"])
        info = image.probe(p["target"])
        if info.is_device:
            image.refuse_device_in_use(p["target"], os.stat(p["target"]).st_rdev)
        elif not stat.S_ISREG(os.stat(p["target"]).st_mode):
            module.fail_json(msg=f"{p['target']}: not a partition or image file")
        check = verify.check_target(manifest, p["target"], pieces=p["pieces"])
    except P2PFleetError as exc:
        module.fail_json(msg=str(exc), verified=False)
    if check.mismatch is not None:
        exc = check.mismatch
        if check.pieces_error is not None:
            module.fail_json(msg=f"{exc}; the pieces could not be checked: {check.pieces_error}", verified=False)
        failed = dict(verified=False, msg=str(exc))
        if check.bad is not None:
            failed.update(bad_pieces=len(check.bad), first_bad_pieces=check.bad[:20],
                          msg=f"{exc}; {len(check.bad)} of {manifest.piece_count} pieces are wrong")
        module.fail_json(**failed)
    result = check.digest
    seconds = time.monotonic() - started
    module.exit_json(changed=False, verified=True, digest=f"{result.algorithm}:{result.value}", bytes=result.size,
                     seconds=round(seconds, 3), mib_per_second=round(result.size / (1 << 20) / max(seconds, 1e-9), 1))


if __name__ == "__main__":
    main()
