# -*- coding: utf-8 -*-
# Copyright: p2pfleet.imaging contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Glue shared by the collection's modules. Private: modules may change it freely."""

from __future__ import annotations

from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.agent import DEFAULT_SOCKET
from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.errors import P2PFleetError
from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.metainfo import Manifest

AGENT_ARGS = dict(socket=dict(type="path", default=DEFAULT_SOCKET))

# The inventory's p2pfleet_slots, as slot_info and boot_slot take it (doc fragment: slots).
SLOTS_ARG = dict(type="list", elements="dict", required=True, options=dict(
    name=dict(type="str", required=True), partlabel=dict(type="str"), partuuid=dict(type="str"),
    device=dict(type="path"), boot_entry=dict(type="str")))


def slot_definitions(slots):
    """The slot definitions as the engine takes them: the options that are set."""
    return [{k: v for k, v in d.items() if v is not None} for d in slots]


def read_manifest_header(path):
    """Name, info-hash and size of a manifest (for modules that only hand the manifest to
    the agent). The engine's own reading: a regular file of bounded size, every field type-
    and range-checked; the torrent is left to the agent. Raises ValueError with one line
    naming the problem."""
    try:
        manifest = Manifest.load(path, complete=False)
    except P2PFleetError as exc:
        raise ValueError(str(exc)) from None
    return {"name": manifest.name, "info_hash": manifest.info_hash, "image_size": manifest.image_size}


def renamed(spec, old):
    """An option's ``spec`` that still takes its old name ``old``, for one release: give the
    module's ``{old: new}`` to :func:`deprecate_renamed` so that using it warns."""
    return dict(spec, aliases=[old])


def deprecate_renamed(module, renames):
    """Ansible's deprecation warning, naming the new option, for each old name (``{old: new}``)
    the task used. Ansible's own ``deprecated_aliases`` says only "see the module docs"."""
    for old, new in renames.items():
        if old in module.params:
            module.deprecate(f"option '{old}' is now called '{new}'", version="0.3.0", collection_name="p2pfleet.imaging")
