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
import os
import stat
from dataclasses import dataclass

from .errors import ImageError, TargetRefused
from .identity import read_gpt
from .image import SECTOR, device_size, running_root_devices
LOCATORS = ("partlabel", "partuuid", "device")
DEFINITION_KEYS = ("name",) + LOCATORS + ("boot_entry",)


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
