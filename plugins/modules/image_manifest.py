#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: p2pfleet.imaging contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: image_manifest
short_description: Make the manifest of an image file or partition, or reuse it when the image is unchanged
version_added: 0.1.0
description:
  - On the seeding host, hashes an image (a regular file or a raw partition such as C(/dev/sdb2)) in one read
    into a private v1 torrent with large pieces and a C(NAME.manifest.json) beside it (info-hash, size, pieces,
    whole-image digest).
  - When a manifest of the same image with the same layout is already in O(dest) and the image's fingerprint
    is unchanged, nothing is read and the module reports no change. A 256 GB image is hashed once.
author: p2pfleet maintainers (!UNKNOWN)
extends_documentation_fragment:
  - p2pfleet.imaging.attributes
attributes:
  check_mode:
    support: full
    details:
      - Tells whether the image would be hashed; hashes and writes nothing.
  diff_mode:
    support: none
  idempotent:
    support: full
options:
  image:
    description: The image, a regular file or a block device (partition) on the managed host.
    type: path
    required: true
  dest:
    description: Existing directory for C(NAME.torrent) and C(NAME.manifest.json).
    type: path
    required: true
  name:
    description: Image name, used for both files. Defaults to the base name of O(image).
    type: str
  piece_size:
    description:
      - Piece size, a power of two from V(16K) to V(64M) (suffixes K, M, G).
      - By default the smallest power of two from 256 KiB that keeps the image within 65,536 pieces,
        up to 4 MiB (a 256 GiB image gets 4 MiB); larger images keep 4 MiB or more, doubled so the piece
        count stays at most 262,144.
    type: str
  split_size:
    description: Expose the image as virtual files of this size (a multiple of the piece size).
    type: str
  force:
    description: Hash again even when the image looks unchanged.
    type: bool
    default: false
seealso:
  - module: p2pfleet.imaging.swarm_job
'''

EXAMPLES = r'''
- name: Make (or reuse) the manifest of release 2
  p2pfleet.imaging.image_manifest:
    image: /srv/images/release-2.img
    dest: /srv/images
  register: release

- name: Manifest of a partition, 8 MiB pieces
  p2pfleet.imaging.image_manifest:
    image: /dev/disk/by-partlabel/golden
    dest: /var/lib/p2pfleet/manifests
    name: golden-2026-11
    piece_size: 8M
'''

RETURN = r'''
manifest:
  description: Path of the manifest on the managed host.
  returned: success and not in check mode, or when an existing manifest is reused
  type: str
  sample: /srv/images/release-2.img.manifest.json
torrent:
  description: Path of the torrent beside the manifest.
  returned: same as RV(manifest)
  type: str
info_hash:
  description: Hex v1 info-hash of the torrent; the id of the image's jobs and swarm.
  returned: same as RV(manifest)
  type: str
  sample: 3f786850e387550fdab836ed7e6dc881de23001b
image_size:
  description: Bytes of the image.
  returned: same as RV(manifest)
  type: int
piece_size:
  description: Bytes per piece.
  returned: same as RV(manifest)
  type: int
piece_count:
  description: Number of pieces.
  returned: same as RV(manifest)
  type: int
digest:
  description: Whole-image digest as C(ALGORITHM:HEX).
  returned: same as RV(manifest)
  type: str
  sample: "blake3:9c0b...e1"
seconds:
  description: Seconds the module took (hashing, or the fingerprint check when reused).
  returned: always
  type: float
'''

import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine import metainfo
from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.errors import P2PFleetError


def main():
    module = AnsibleModule(
        argument_spec=dict(
            image=dict(type="path", required=True),
            dest=dict(type="path", required=True),
            name=dict(type="str"),
            piece_size=dict(type="str"),
            split_size=dict(type="str"),
            force=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    p = module.params
    started = time.monotonic()
    try:
        manifest, changed = metainfo.create_manifest(
            p["image"], p["dest"], name=p["name"],
            piece_size=metainfo.parse_size(p["piece_size"]) if p["piece_size"] else None,
            split_size=metainfo.parse_size(p["split_size"]) if p["split_size"] else None,
            force=p["force"], dry_run=module.check_mode)
    except P2PFleetError as exc:
        module.fail_json(msg=str(exc))
    result = dict(changed=changed, seconds=round(time.monotonic() - started, 3))
    if manifest is not None:
        result.update(manifest=manifest.path, torrent=manifest.torrent_path, info_hash=manifest.info_hash,
                      image_size=manifest.image_size, piece_size=manifest.piece_size,
                      piece_count=manifest.piece_count, digest=f"{manifest.digest_algorithm}:{manifest.digest}")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
