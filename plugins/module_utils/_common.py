# -*- coding: utf-8 -*-
# Copyright: p2pfleet.imaging contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Glue shared by the collection's modules. Private: modules may change it freely."""

from __future__ import annotations

import json

from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.errors import P2PFleetError
from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.files import read_capped

DEFAULT_SOCKET = "/run/p2pfleet/agent.sock"

AGENT_ARGS = dict(socket=dict(type="path", default=DEFAULT_SOCKET))


def read_manifest_header(path, limit=4 << 20):
    """Name, info-hash and size of a manifest without the engine (for modules that only
    hand the manifest to the agent). Raises ValueError with one line naming the problem."""
    try:
        raw = read_capped(path, limit, "manifest")
    except P2PFleetError as exc:
        raise ValueError(str(exc)) from None
    try:
        data = json.loads(raw)
        header = {"name": str(data["name"]), "info_hash": str(data["info_hash"]),
                  "image_size": int(data["image_size"])}
    except (ValueError, RecursionError, KeyError, TypeError):
        raise ValueError(f"{path}: not a p2pfleet manifest") from None
    if len(header["info_hash"]) != 40 or any(c not in "0123456789abcdef" for c in header["info_hash"]):
        raise ValueError(f"{path}: info_hash is not 40 hex digits")
    return header
