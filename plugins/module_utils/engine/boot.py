"""The boot environment: which slot a terminal boots next, and how to change it safely.

Every backend offers the same four calls on a slot's *boot entry*:

* ``query()``      — the confirmed default, the one-shot entry pending for the next boot (if
                     any), and the entry booted now when the firmware says so;
* ``try_next(e)``  — boot ``e`` once, at the next boot only; any later boot (a crash, a
                     power cut, a reboot) goes back to the confirmed default;
* ``confirm(e)``   — make ``e`` the default (and drop any pending one-shot);
* ``reject(e)``    — drop a pending one-shot of ``e``; refused for the confirmed default.

Each change takes ``dry_run`` and then only says whether it would change anything (check
mode).

So a switch is: ``try_next(new)``, reboot, check health, ``confirm(new)``. Nothing here
can leave a terminal without a bootable default: ``check_change`` refuses to confirm a slot
that is not the one running now, or to arm a slot whose partition is missing; and
``refuse_fallback_target`` keeps every writer (the agent) off the slot a failed boot would
return to, as each backend's ``fallback()`` reads it, and off the slot running now.

Backends: GRUB (environment block, ``grub-editenv``), UEFI (``efibootmgr``: ``BootNext``
and ``BootOrder``) and U-Boot (``fw_setenv``/``fw_printenv``).
"""
import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass

from . import slots as slot_defs
from .errors import P2PFleetError, TargetRefused
from .files import read_capped, write_atomic
from .image import overlaps

GRUBENV_SIZE = 1024
GRUBENV_HEADER = "# GRUB Environment Block\n"
DEFAULT_GRUBENV = "/boot/grub/grubenv"
DEFAULT_GRUB_DEFAULT_CFG = "/boot/grub/p2pfleet-default.cfg"
BOOT_ID = "/proc/sys/kernel/random/boot_id"
BACKENDS = ("auto", "grub", "efi", "uboot")


class BootError(P2PFleetError):
    """The boot environment cannot be read or written as asked."""


@dataclass(frozen=True)
class BootState:
    backend: str
    default: str = None  # the confirmed entry
    pending: str = None  # the one-shot entry of the next boot
    current: str = None  # the entry booted now, where the firmware says

    def next_boot(self) -> str:
        return self.pending or self.default

    def as_dict(self) -> dict:
        return asdict(self)


def _run(cmd, what, env=None) -> str:
    if shutil.which(cmd[0]) is None:
        raise BootError(f"{cmd[0]} is not installed; it is needed to {what}")
    # The engine has no AnsibleModule (the agent runs it too): run_command is not there to call.
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60, check=False)  # pylint: disable=ansible-bad-function
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise BootError(f"{' '.join(cmd[:2])}… failed to {what}: {detail[-1] if detail else proc.returncode}")
    return proc.stdout


def _apply(steps, dry_run) -> bool:
    """Run the steps a change needs (none in a dry run); whether there were any."""
    if not dry_run:
        for step in steps:
            step()
    return bool(steps)


def _entry(entry) -> str:
    entry = str(entry)
    if not entry or not re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", entry):
        raise BootError(f"invalid boot entry {entry!r}: letters, digits and _ . : - only")
    return entry


def _refuse_default(entry):
    raise BootError(f"entry {entry} is the confirmed default; confirm another slot before rejecting it")


class _OneShotVariable:
    """A backend whose environment holds the one-shot entry in one variable (GRUB, U-Boot):
    ``_arm(entry)`` sets it, ``_disarm()`` clears it; ``query()`` reads both entries."""

    def try_next(self, entry, dry_run=False) -> bool:
        entry = _entry(entry)
        if self.query().pending == entry:
            return False
        return _apply([lambda: self._arm(entry)], dry_run)

    def reject(self, entry, dry_run=False) -> bool:
        entry = _entry(entry)
        state = self.query()
        if state.default == entry:
            _refuse_default(entry)
        if state.pending == entry:
            return _apply([self._disarm], dry_run)
        return False


# -- GRUB ------------------------------------------------------------------------------
def parse_grub_env(text: str) -> dict:
    """The variables of a GRUB environment block (an empty or damaged block has none)."""
    if not text.startswith(GRUBENV_HEADER):
        return {}
    found = {}
    for line in text[len(GRUBENV_HEADER):].split("\n"):
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if sep:
            found[key] = value.replace("\\n", "\n").replace("\\\\", "\\")
    return found


def read_grub_env(path: str) -> dict:
    """The variables in the GRUB environment block at ``path``."""
    raw = read_capped(path, 64 * GRUBENV_SIZE, "GRUB environment block", error=BootError)
    return parse_grub_env(raw.decode("utf-8", errors="replace"))


class GrubBackend(_OneShotVariable):
    """GRUB with the collection's A/B configuration (see ``docs/boot.md``).

    One-shot boots use ``next_entry``, which the configuration clears before it boots;
    the default is ``saved_entry`` *and* a one-line ``p2pfleet-default.cfg`` that the
    configuration reads before the environment block, so an empty or damaged block (a
    power cut while ``grub-editenv`` rewrote it) still boots the confirmed slot.
    """

    name = "grub"

    def __init__(self, grubenv: str = DEFAULT_GRUBENV, default_cfg: str = None):
        self.grubenv = grubenv
        self.default_cfg = default_cfg if default_cfg is not None else os.path.join(
            os.path.dirname(grubenv), os.path.basename(DEFAULT_GRUB_DEFAULT_CFG))

    def _env(self) -> dict:
        return read_grub_env(self.grubenv) if os.path.exists(self.grubenv) else {}

    def _editenv(self, *args) -> None:
        if not self._block_intact():
            # Missing, or emptied by a power cut: start a fresh block; the default file
            # still says which slot is confirmed.
            if os.path.exists(self.grubenv):
                os.unlink(self.grubenv)
            _run(["grub-editenv", self.grubenv, "create"], "create the GRUB environment block")
        _run(["grub-editenv", self.grubenv, *args], "change the GRUB environment block")

    def _block_intact(self) -> bool:
        try:
            with open(self.grubenv, "rb") as f:
                head = f.read(GRUBENV_SIZE + 1)
        except OSError:
            return False
        return len(head) == GRUBENV_SIZE and head.startswith(GRUBENV_HEADER.encode())

    def _file_default(self):
        try:
            text = read_capped(self.default_cfg, 4096, "GRUB default", error=BootError).decode()
        except BootError:
            return None
        match = re.search(r'^set p2pfleet_default="?([A-Za-z0-9_.:-]+)"?$', text, re.M)
        return match.group(1) if match else None

    def query(self) -> BootState:
        env = self._env()
        return BootState(self.name, default=env.get("saved_entry") or self._file_default(),
                         pending=env.get("next_entry") or None)

    def fallback(self, entries) -> list:
        """The entries a boot without a one-shot may end in, each with where it is written.

        The configuration boots ``saved_entry``, and sets GRUB's ``fallback`` to the default
        file's entry, or to the first slot when there is no such file: a saved entry whose
        kernel cannot load ends there.
        """
        found = []
        saved = self._env().get("saved_entry")
        if saved:
            found.append((saved, "GRUB saved_entry"))
        file_default = self._file_default()
        if file_default:
            found.append((file_default, f"GRUB {os.path.basename(self.default_cfg)}"))
        else:
            found.append((entries[0], f"GRUB's first slot, as no {os.path.basename(self.default_cfg)} names one"))
        return found

    def _arm(self, entry) -> None:
        self._editenv("set", f"next_entry={entry}")

    def _disarm(self) -> None:
        self._editenv("unset", "next_entry")

    def confirm(self, entry, dry_run=False) -> bool:
        entry = _entry(entry)
        state = self.query()
        steps = []
        if self._file_default() != entry:
            steps.append(lambda: write_atomic(self.default_cfg, f'set p2pfleet_default="{entry}"\n'.encode(),
                                              error=BootError))
        if self._env().get("saved_entry") != entry:
            steps.append(lambda: self._editenv("set", f"saved_entry={entry}"))
        if state.pending:
            steps.append(self._disarm)
        return _apply(steps, dry_run)


# -- UEFI --------------------------------------------------------------------------------
class EfiBackend:
    """UEFI boot entries through ``efibootmgr``: one entry per slot, named by its label
    (``boot_entry`` is the label, e.g. ``p2pfleet A``, or the 4-digit hex number).

    One-shot is ``BootNext``, which the firmware deletes before it boots the entry; the
    default is the first entry of ``BootOrder``.
    """

    name = "efi"

    def __init__(self, efibootmgr: str = "efibootmgr", env=None):
        self.cmd = efibootmgr
        self.env = env

    def _state(self):
        out = _run([self.cmd], "read the UEFI boot entries", self.env)
        info = {"entries": {}}
        for line in out.splitlines():
            match = re.match(r"Boot([0-9A-Fa-f]{4})(\*?) (.*?)(\t.*)?$", line)
            if match:
                info["entries"][match.group(1).upper()] = match.group(3).strip()
                continue
            key, sep, value = line.partition(":")
            if sep:
                info[key.strip()] = value.strip()
        return info

    def _number(self, info, entry) -> str:
        entry = str(entry)
        if re.fullmatch(r"[0-9A-Fa-f]{4}", entry) and entry.upper() in info["entries"]:
            return entry.upper()
        found = [num for num, label in info["entries"].items() if label == entry]
        if len(found) != 1:
            raise BootError(f"UEFI boot entry {entry!r}: {'no' if not found else 'more than one'} entry has that "
                            f"label (entries: {', '.join(sorted(info['entries'].values())) or 'none'})")
        return found[0]

    def _label(self, info, number):
        return info["entries"].get(number, number) if number else None

    def query(self) -> BootState:
        info = self._state()
        order = [n.upper() for n in info.get("BootOrder", "").split(",") if n]
        return BootState(self.name, default=self._label(info, order[0] if order else None),
                         pending=self._label(info, (info.get("BootNext") or "").upper() or None),
                         current=self._label(info, (info.get("BootCurrent") or "").upper() or None))

    def fallback(self, entries) -> list:
        """The first slot's entry in ``BootOrder``: the firmware tries the order's entries in
        turn, so one that is no slot (a network boot) ahead of it does not protect it."""
        info = self._state()
        numbers = {}
        for entry in entries:
            try:
                numbers[self._number(info, entry)] = entry
            except BootError:
                continue  # a slot without a boot entry is never booted
        order = [n.upper() for n in info.get("BootOrder", "").split(",") if n]
        for position, number in enumerate(order):
            if number in numbers:
                return [(numbers[number], "EFI BootOrder" + (f", its first slot entry Boot{number}" if position else ""))]
        return []

    def try_next(self, entry, dry_run=False) -> bool:
        info = self._state()
        number = self._number(info, entry)
        if (info.get("BootNext") or "").upper() == number:
            return False
        return _apply([lambda: _run([self.cmd, "--bootnext", number], "set BootNext", self.env)], dry_run)

    def confirm(self, entry, dry_run=False) -> bool:
        info = self._state()
        number = self._number(info, entry)
        order = [n.upper() for n in info.get("BootOrder", "").split(",") if n]
        steps = []
        if not order or order[0] != number:
            new_order = ",".join([number] + [n for n in order if n != number])
            steps.append(lambda: _run([self.cmd, "--bootorder", new_order], "set BootOrder", self.env))
        if info.get("BootNext"):
            steps.append(lambda: _run([self.cmd, "--delete-bootnext"], "delete BootNext", self.env))
        return _apply(steps, dry_run)

    def reject(self, entry, dry_run=False) -> bool:
        info = self._state()
        number = self._number(info, entry)
        order = [n.upper() for n in info.get("BootOrder", "").split(",") if n]
        if order and order[0] == number:
            _refuse_default(entry)
        if (info.get("BootNext") or "").upper() == number:
            return _apply([lambda: _run([self.cmd, "--delete-bootnext"], "delete BootNext", self.env)], dry_run)
        return False


# -- U-Boot ------------------------------------------------------------------------------
class UBootBackend(_OneShotVariable):
    """U-Boot's environment through ``fw_printenv``/``fw_setenv`` (``/etc/fw_env.config``).

    The collection's boot script (``docs/boot.md``) boots ``p2pfleet_next`` once (clearing
    it with ``saveenv`` first), else ``p2pfleet_default``.
    """

    name = "uboot"
    NEXT, DEFAULT = "p2pfleet_next", "p2pfleet_default"

    def __init__(self, config: str = None):
        self.config = config

    def _cmd(self, tool):
        return [tool] + (["-c", self.config] if self.config else [])

    def _env(self) -> dict:
        out = _run(self._cmd("fw_printenv"), "read the U-Boot environment")
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def _set(self, key, value=None) -> None:
        _run(self._cmd("fw_setenv") + [key] + ([value] if value is not None else []), "change the U-Boot environment")

    def query(self) -> BootState:
        env = self._env()
        return BootState(self.name, default=env.get(self.DEFAULT) or None, pending=env.get(self.NEXT) or None)

    def fallback(self, _entries) -> list:
        """``p2pfleet_default``: the boot script's choice whenever no one-shot is pending."""
        default = self.query().default
        return [(default, f"U-Boot {self.DEFAULT}")] if default else []

    def _arm(self, entry) -> None:
        self._set(self.NEXT, entry)

    def _disarm(self) -> None:
        self._set(self.NEXT)

    def confirm(self, entry, dry_run=False) -> bool:
        entry = _entry(entry)
        state = self.query()
        steps = []
        if state.default != entry:
            steps.append(lambda: self._set(self.DEFAULT, entry))
        if state.pending:
            steps.append(self._disarm)
        return _apply(steps, dry_run)


def detect(grubenv: str = DEFAULT_GRUBENV) -> str:
    """The backend a host uses: GRUB when its environment block is there, else UEFI when
    the firmware exposes variables, else U-Boot when its tools are configured."""
    if os.path.exists(grubenv):
        return "grub"
    if os.path.isdir("/sys/firmware/efi/efivars") and shutil.which("efibootmgr"):
        return "efi"
    if os.path.exists("/etc/fw_env.config") and shutil.which("fw_setenv"):
        return "uboot"
    raise BootError(f"cannot tell how this host boots: no {grubenv}, no UEFI variables, no U-Boot "
                    "environment; set the backend explicitly")


def from_settings(settings):
    """The backend a terminal's boot settings name (``backend``, ``grubenv``,
    ``uboot_config``: the agent's ``boot`` config, the modules' ``boot`` option)."""
    settings = settings or {}
    return backend(settings.get("backend") or "auto", grubenv=settings.get("grubenv") or DEFAULT_GRUBENV,
                   uboot_config=settings.get("uboot_config"))


def boot_id() -> str:
    """This boot's id (a new one at every boot): how a reboot is told from no reboot."""
    try:
        with open(BOOT_ID, encoding="ascii") as f:
            return f.read(64).strip()
    except OSError as exc:
        raise BootError(f"{BOOT_ID}: cannot read: {exc.strerror}") from None


def reboot_soon(delay: int = 2) -> None:
    """Reboot this host ``delay`` seconds from now, in a process of its own, so that whoever
    asked gets its answer first (and a whole batch of terminals reboots together)."""
    command = f"sleep {int(delay)} && exec /sbin/shutdown -r now 'p2pfleet switch'"
    try:
        subprocess.Popen(["/bin/sh", "-c", command], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,  # pylint: disable=ansible-bad-function
                         stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
    except OSError as exc:
        raise BootError(f"cannot start the reboot: {exc.strerror}") from None


def backend(name: str, grubenv: str = DEFAULT_GRUBENV, uboot_config: str = None):
    if name == "auto":
        name = detect(grubenv)
    if name == "grub":
        return GrubBackend(grubenv)
    if name == "efi":
        return EfiBackend()
    if name == "uboot":
        return UBootBackend(uboot_config)
    raise BootError(f"unknown boot backend {name!r}: use {', '.join(BACKENDS)}")


# -- what the boot environment means for the slots -----------------------------------------
def fallback_slots(found, backend_) -> list:
    """``(slot, where)`` for every slot a boot goes to when no one-shot is pending (the
    confirmed default, and where the backend has one, the entry a failed default ends in).

    A pending one-shot is not among them: every backend clears it before booting it, so a
    failed try returns here. Raises BootError when the boot environment names no slot: then
    nobody can say which slot must be kept.
    """
    by_entry = {slot.entry: slot for slot in found}
    pairs = backend_.fallback(list(by_entry))
    if not pairs:
        raise BootError(f"the {backend_.name} boot environment names none of the slots' entries "
                        f"({', '.join(by_entry)}) as its default")
    result = []
    for entry, where in pairs:
        if entry not in by_entry:
            raise BootError(f"{where} is {entry!r}, which is no slot's boot entry ({', '.join(by_entry)})")
        result.append((by_entry[entry], where))
    return result


def check_change(definitions, name, state, force=False):
    """Refuse a boot change that could leave the terminal one reboot away from unbootable.

    ``next`` and ``confirmed`` need every slot's partition to be there, and found once (a
    label on two disks is refused by ``slots.resolve_slots``); ``confirmed`` also needs the
    slot to be the one running now — a default that never booted is a terminal that may
    never boot again — unless ``force``. ``rejected`` only ever drops a pending one-shot, so
    it is allowed even when the slot's partition is gone: that is when it is needed most.
    Returns the slot (None for ``rejected``).
    """
    if state == "rejected":
        return None
    found = slot_defs.resolve_slots(definitions)
    slot = next(s for s in found if s.name == name)
    if state == "confirmed" and not slot.booted and not force:
        booted, _inactive = slot_defs.booted_and_inactive(found)
        running = (f"the running system is slot {booted.name}" if booted
                   else "no slot holds the running root file system")
        raise BootError(f"slot {name}: not confirmed, as it is not the slot booted now ({running}); confirm a slot "
                        "only once it runs and is healthy (force: true overrides, at the risk of an unbootable "
                        "terminal)")
    return slot


def refuse_fallback_target(path, definitions, settings) -> None:
    """Refuse to write ``path`` when it is, or holds, the slot running now or a slot the
    boot environment falls back to (``fallback_slots``), whoever asks.

    ``definitions`` are the terminal's slots, ``settings`` its boot settings (``backend``,
    ``grubenv``, ``uboot_config``: the modules' ``boot`` option). What cannot be told is
    refused: slots that do not match the disk, or a boot environment naming no slot, when
    ``path`` is a slot. Raises TargetRefused, before anything is opened for writing.
    """
    try:
        found = slot_defs.resolve_slots(definitions)
    except P2PFleetError as exc:
        raise TargetRefused(f"{path}: cannot tell whether it is a slot this terminal boots ({exc}); "
                            "refusing to write it") from None
    # Compared by what writing the path would change, not by name: a symlink to the slot,
    # the whole disk holding it, a loop device over its bytes.
    written = [slot for slot in found if overlaps(path, slot.device)]
    for slot in written:
        if slot.booted:
            raise TargetRefused(f"{path}: {_is_or_holds(path, slot)} slot {slot.name}, the slot running now (it holds "
                                "the running root file system); refusing to write it")
    if not written:
        return
    try:
        fallbacks = fallback_slots(found, from_settings(settings))
    except P2PFleetError as exc:
        raise TargetRefused(f"{path}: {_is_or_holds(path, written[0])} slot {written[0].name}, and which slot this "
                            f"terminal falls back to cannot be told ({exc}); refusing to write it") from None
    for slot, where in fallbacks:
        if slot in written:
            raise TargetRefused(f"{path}: {_is_or_holds(path, slot)} slot {slot.name}, the slot this terminal falls "
                                f"back to ({where}); refusing to write it")


def _is_or_holds(path, slot) -> str:
    try:
        return "is" if os.stat(path).st_rdev == slot.devno else "holds"
    except OSError:
        return "holds"
