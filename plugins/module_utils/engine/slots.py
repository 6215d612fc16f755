"""A/B *slots*: the partitions a terminal boots from, found from the inventory's definitions.

A slot is defined by its partition label (``partlabel``), its partition UUID (``partuuid``)
or a device path (``device``). Labels are what a lab's inventory should use: they survive
disks being renumbered. They are looked up the way udev names them
(``/dev/disk/by-partlabel``) and, where there is no udev (containers, initramfs), by reading
the GPT of every disk directly — the labels live there. A label or UUID that two partitions
carry (a cloned disk, a USB stick made from a terminal's image) is an error naming both:
udev's link names only one of them, and which one is a matter of probe order, so the GPT of
every disk is read for duplicates even where the link exists.

Which slot is *booted* is a fact of the running system, not of any configuration: the slot
whose partition holds the running root file system. The other one is *inactive*, the only
one a new image may be written into.
"""
import hashlib
import json
import logging
import os
import stat
import time
from dataclasses import dataclass

from .errors import ImageError, ManifestError, StateError, TargetRefused
from .files import ensure_private_dir, read_capped, write_atomic
from .identity import difference as identity_difference, read_gpt
from .image import SECTOR, device_size, refuse_device_in_use, running_root_devices
from .metainfo import Manifest, fingerprint

log = logging.getLogger("p2pfleet.slots")
LOCATORS = ("partlabel", "partuuid", "device")
DEFINITION_KEYS = ("name",) + LOCATORS + ("boot_entry",)
LEDGER_FORMAT = 1
CLEAN, CHANGED = "clean", "changed"


class SlotError(ImageError):
    """Slot definitions that do not match the disk."""


@dataclass(frozen=True)
class Slot:
    name: str
    device: str  # the block device node found for the definition
    size: int
    devno: int
    booted: bool
    definition: dict

    @property
    def entry(self) -> str:
        """The boot loader's entry for this slot (see ``boot_entry``)."""
        return boot_entry(self.definition)

    def as_dict(self) -> dict:
        return {"name": self.name, "device": self.device, "size": self.size, "booted": self.booted,
                **{k: v for k, v in self.definition.items() if k not in ("name",)}}


def boot_entry(definition: dict) -> str:
    """A slot's entry in the boot environment: its ``boot_entry``, else its name."""
    return str(definition.get("boot_entry") or definition["name"])


def check_definitions(definitions) -> None:
    """Refuse slot definitions that cannot describe an A/B pair, before any disk is looked at.

    The modules' ``slots`` option and the agent's ``slots`` key are both checked here.
    """
    if not isinstance(definitions, (list, tuple)) or len(definitions) < 2:
        raise SlotError("slots: define at least two slots (A and B)")
    seen_names = set()
    for index, definition in enumerate(definitions):
        if not isinstance(definition, dict) or not definition.get("name"):
            raise SlotError(f"slots[{index}]: every slot needs a name")
        unknown = sorted(str(k) for k in definition if k not in DEFINITION_KEYS)
        if unknown:
            raise SlotError(f"slots[{index}]: {unknown[0]}: unknown key (known: {', '.join(DEFINITION_KEYS)})")
        bad = [k for k, v in definition.items() if v is not None and not isinstance(v, (str, int))]
        if bad:
            raise SlotError(f"slots[{index}]: {bad[0]}: must be a string, got {definition[bad[0]]!r}")
        name = str(definition["name"])
        if name in seen_names:
            raise SlotError(f"slots[{index}]: two slots are named {name}")
        seen_names.add(name)
        keys = [k for k in LOCATORS if definition.get(k)]
        if len(keys) != 1:
            raise SlotError(f"slot {name}: give exactly one of partlabel, partuuid, device")


def resolve_slots(definitions, dev_root: str = "/dev") -> list:
    """Find every slot's device. Raises SlotError naming the definition that is wrong."""
    check_definitions(definitions)
    roots = running_root_devices()
    partitions = None  # every disk's GPT, read once, and only if a label or UUID is asked for
    slots, seen_devices = [], {}
    for definition in definitions:
        name = str(definition["name"])
        key = next(k for k in LOCATORS if definition.get(k))
        if key != "device" and partitions is None:
            partitions = _gpt_partitions(dev_root)
        device = _find(key, str(definition[key]), name, dev_root, partitions)
        devno = os.stat(device).st_rdev
        if devno in seen_devices:
            raise SlotError(f"slot {name}: {device} is also slot {seen_devices[devno]}; each slot needs its own "
                            "partition")
        seen_devices[devno] = name
        slots.append(Slot(name, device, device_size(device), devno, devno in roots, dict(definition)))
    return slots


def booted_and_inactive(slots) -> tuple:
    """``(booted slot or None, inactive slot or None)`` for an A/B pair."""
    booted = [s for s in slots if s.booted]
    others = [s for s in slots if not s.booted]
    inactive = others[0] if len(booted) == 1 and len(others) == 1 else None
    return (booted[0] if len(booted) == 1 else None), inactive


def refuse_booted(slot) -> None:
    if slot.booted:
        raise TargetRefused(f"slot {slot.name} ({slot.device}) holds the running root file system; "
                            "write the inactive slot")


def _find(key, value, name, dev_root, partitions) -> str:
    if key == "device":
        path = value
        if not os.path.exists(path):
            raise SlotError(f"slot {name}: device {path} does not exist")
    else:
        path = _find_partition(key, value, name, dev_root, partitions)
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise SlotError(f"slot {name}: {path}: {exc.strerror}") from None
    if not stat.S_ISBLK(mode):
        raise SlotError(f"slot {name}: {path} is not a block device")
    return os.path.realpath(path)


def _find_partition(key, value, name, dev_root, partitions) -> str:
    """The one partition carrying the label or UUID: udev's link, and every disk's GPT."""
    wanted = value.lower() if key == "partuuid" else value
    found = {}  # device number -> node, the link's node first (the name udev gives it)
    link = os.path.join(dev_root, "disk", "by-" + key, value)
    for node in [link] + [node for node, label, part_uuid in partitions
                          if (label if key == "partlabel" else part_uuid) == wanted]:
        try:
            found.setdefault(os.stat(node).st_rdev, node)
        except OSError:
            continue
    if not found:
        raise SlotError(f"slot {name}: no partition has {key} {value!r} on this host")
    if len(found) > 1:
        nodes = sorted(os.path.realpath(n) for n in found.values())
        raise SlotError(f"slot {name}: {key} {value!r} is on {len(nodes)} partitions, {' and '.join(nodes)} "
                        "(a cloned disk? a stick made from an image?); remove the other disk or relabel it")
    return next(iter(found.values()))


def _gpt_partitions(dev_root) -> list:
    """``(node, partlabel, partuuid)`` of every GPT partition of every disk with a node here."""
    partitions = []
    for disk in sorted(os.listdir("/sys/block")):
        node = os.path.join(dev_root, disk)
        if not os.path.exists(node):
            continue
        try:
            with open(os.path.join("/sys/block", disk, "queue", "logical_block_size"), encoding="ascii") as f:
                block = int(f.read())
            entries = _gpt_entries(node, block)
        except (OSError, ValueError):
            continue  # unreadable or no GPT: holds no slot this host could name
        for start, part_name, part_uuid in entries:
            found = _partition_node(disk, start * block // SECTOR, dev_root)
            if found:
                partitions.append((found, part_name, part_uuid))
    return partitions


def _gpt_entries(node, block):
    fd = os.open(node, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return read_gpt(fd, block)[1]
    finally:
        os.close(fd)


def _partition_node(disk, start, dev_root):
    base = os.path.join("/sys/block", disk)
    for name in sorted(os.listdir(base)):
        try:
            with open(os.path.join(base, name, "start"), encoding="ascii") as f:
                if int(f.read()) != start:
                    continue
        except (OSError, ValueError):
            continue
        node = os.path.join(dev_root, name)
        if os.path.exists(node):
            return node
    return None


# -- the slot ledger: what each slot holds ----------------------------------------------
@dataclass
class LedgerEntry:
    """What the agent knows a slot holds: the image of ``manifest``, clean or changed since."""

    path: str
    identity: dict
    info_hash: str
    name: str
    state: str
    why: str
    recorded: float
    fingerprint: dict
    manifest: Manifest

    @property
    def clean(self) -> bool:
        return self.state == CLEAN

    def as_dict(self) -> dict:
        return {"path": self.path, "name": self.name, "info_hash": self.info_hash, "state": self.state,
                "why": self.why, "recorded": self.recorded}


class Ledger:
    """``<state_dir>/slots/``: one entry per slot a fetch has written, with its manifest.

    Written when a fetch verifies a slot; marked *changed* the moment a fetch starts
    writing into it (a crash halfway leaves it changed, never falsely clean).
    """

    def __init__(self, state_dir: str):
        self.dir = ensure_private_dir(os.path.join(state_dir, "slots"), error=StateError)

    def _key(self, path: str) -> str:
        return hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:20]

    def _file(self, path: str, suffix: str) -> str:
        return os.path.join(self.dir, self._key(path) + suffix)

    def record(self, path: str, identity: dict, manifest: Manifest, fingerprint_now: dict) -> None:
        """``path`` now holds ``manifest``'s image, proved by its digest; ``fingerprint_now``
        is the slot's ``slot_fingerprint`` read right after the proof."""
        manifest.copy_to(self.dir, self._key(path), error=StateError)
        self._write(path, {"path": os.path.abspath(path), "identity": identity, "info_hash": manifest.info_hash,
                           "name": manifest.name, "state": CLEAN, "why": "verified", "recorded": time.time(),
                           "fingerprint": fingerprint_now})

    def mark_changed(self, path: str, why: str) -> None:
        data = self._read(path)
        if data is not None and data.get("state") != CHANGED:
            data.update(state=CHANGED, why=why, recorded=time.time())
            self._write(path, data)

    def forget(self, path: str) -> None:
        """Remove the entry of ``path`` (best effort: a failure is logged)."""
        for suffix in (".json", ".manifest.json", ".torrent"):
            try:
                os.unlink(self._file(path, suffix))
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.error("%s: cannot remove: %s", self._file(path, suffix), exc.strerror)

    def _write(self, path, data) -> None:
        write_atomic(self._file(path, ".json"), json.dumps(dict(data, format=LEDGER_FORMAT)).encode(), mode=0o600,
                     error=StateError)

    def _read(self, path):
        return self._read_file(self._file(path, ".json"))

    @staticmethod
    def _read_file(file):
        if not os.path.exists(file):
            return None
        try:
            data = json.loads(read_capped(file, 1 << 20, "slot ledger entry", error=StateError))
        except (ValueError, StateError) as exc:
            log.warning("%s: unreadable slot ledger entry ignored: %s", file, exc)
            return None
        if not isinstance(data, dict) or data.get("format") != LEDGER_FORMAT:
            log.warning("%s: not a slot ledger entry of this version; ignored", file)
            return None
        return data

    def entry(self, path: str):
        """The entry of ``path`` with its manifest, or None (missing, unreadable, or stale)."""
        data = self._read(path)
        if data is None:
            return None
        try:
            manifest = Manifest.load(self._file(path, ".manifest.json"))
            if manifest.info_hash != data["info_hash"]:
                raise ValueError(f"its manifest is {manifest.info_hash}, not {data['info_hash']}")
            return LedgerEntry(path=data["path"], identity=data["identity"], info_hash=data["info_hash"],
                               name=data["name"], state=data["state"], why=str(data.get("why", "")),
                               recorded=float(data["recorded"]), fingerprint=data.get("fingerprint") or {},
                               manifest=manifest)
        except (ManifestError, KeyError, TypeError, ValueError) as exc:
            log.warning("slot ledger entry of %s ignored: %s", path, exc)
            return None

    def note_in_use(self) -> None:
        """Mark ``changed`` every slot in use right now: mounted, the running root, swap.
        (The agent calls this when it starts: a slot booted read-write is found at once.)"""
        for entry in self.entries():
            if not entry.clean:
                continue
            try:
                st = os.stat(entry.path)
                if stat.S_ISBLK(st.st_mode):
                    refuse_device_in_use(entry.path, st.st_rdev)
            except TargetRefused as exc:
                self.mark_changed(entry.path, str(exc).split(": ", 1)[-1].split(";")[0])
            except (OSError, ImageError, ValueError) as exc:
                # Cannot tell: the entry stays as it is (its fingerprint still guards it).
                log.warning("%s: cannot tell whether the slot is in use: %s", entry.path, exc)

    def entries(self) -> list:
        found = []
        for name in sorted(os.listdir(self.dir)):
            if name.endswith(".json") and not name.endswith(".manifest.json"):
                data = self._read_file(os.path.join(self.dir, name))
                # A slot that is gone (an image file removed) is not loaded.
                if data and isinstance(data.get("path"), str) and os.path.exists(data["path"]):
                    entry = self.entry(data["path"])
                    if entry is not None:
                        found.append(entry)
        return found


def slot_fingerprint(path) -> dict:
    """The slot's fingerprint (``metainfo.fingerprint``), or ``{}`` when it cannot be read."""
    try:
        return fingerprint(path)
    except (OSError, ImageError):
        return {}


def still_clean(entry: LedgerEntry, identity: dict, io_path: str = None) -> str:
    """``""`` when ``entry`` can be trusted for its slot as it is now (read at ``io_path``,
    its claim's held path, when given), else why not."""
    if not entry.clean:
        return f"the slot may have changed since ({entry.why})"
    if identity_difference(entry.identity, identity):
        return "the slot is another device now"
    if not entry.fingerprint or entry.fingerprint != slot_fingerprint(io_path or entry.path):
        return "the slot was written since its image was verified (its fingerprint changed)"
    return ""
