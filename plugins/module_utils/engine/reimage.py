"""A terminal's *reimage*: which slot a release goes into, and how far it got.

The agent keeps one record per terminal (``<state_dir>/reimage.json``, on the state
partition, so it survives a switch)::

    fetching → verified → tried → confirmed
                            └───→ rolled_back

*fetching*: the release is being fetched into ``slot``; *verified*: the agent's own fetch
proved the whole-image digest and the slot has not changed since (its ledger entry and
fingerprint say so); *tried*: the slot boots once; *confirmed*: it booted, was healthy, and
is the default now; *rolled_back*: it did not come back healthy, the terminal runs its old
slot. Playbooks read and move it through the agent's API (``reimage`` module); they keep
no record of their own.

Which slot a release goes into is decided here, from facts of the terminal alone: never the
slot running now, never a slot the boot environment falls back to, whatever a record or a
re-run says; and a terminal that runs a slot it tried but never confirmed gets nothing
fetched until that switch is finished (confirmed, or rolled back).
"""
import contextlib
import fcntl
import json
import os
import time
from dataclasses import dataclass

from . import boot as boot_env
from . import identity
from . import slots as slot_defs
from .errors import P2PFleetError, StateError
from .files import read_capped, write_atomic
from .metainfo import Manifest

FORMAT = 1
FETCHING, VERIFIED, TRIED, CONFIRMED, ROLLED_BACK = "fetching", "verified", "tried", "confirmed", "rolled_back"
PHASES = (FETCHING, VERIFIED, TRIED, CONFIRMED, ROLLED_BACK)
# What a plan asks of the flow.
CURRENT, FINISH_SWITCH, FETCH = "current", "finish_switch", "fetch"


class ReimageError(P2PFleetError):
    """A reimage step that cannot be taken; the message says why and what to do."""


@dataclass(frozen=True)
class Situation:
    """The terminal's slots as they are now: which one runs, which ones a boot falls back to."""

    slots: tuple
    booted: object  # slots.Slot or None
    fallbacks: dict  # slot name -> where the boot environment says so
    pending: str = ""  # the slot armed to boot once at the next boot, if any

    def slot(self, name):
        return next((s for s in self.slots if s.name == name), None)

    def as_dict(self) -> dict:
        return {"booted": self.booted.name if self.booted else "", "fallback": sorted(self.fallbacks),
                "pending": self.pending, "slots": [s.as_dict() for s in self.slots]}


def situation(definitions, boot_settings) -> Situation:
    """Read the slots and the boot environment (raises ``P2PFleetError`` naming the problem)."""
    found = slot_defs.resolve_slots(definitions)
    backend = boot_env.from_settings(boot_settings)
    fallbacks = {}
    for slot, where in boot_env.fallback_slots(found, backend):
        fallbacks[slot.name] = f"{fallbacks[slot.name]}, {where}" if slot.name in fallbacks else where
    booted, _inactive = slot_defs.booted_and_inactive(found)
    armed = backend.query().pending
    pending = next((slot.name for slot in found if armed and slot.entry == armed), "")
    return Situation(tuple(found), booted, fallbacks, pending)


def plan(now: Situation, record, info_hash: str) -> dict:
    """What the flow must do on this terminal for the release ``info_hash``:

    * ``current`` — it runs that release, confirmed: nothing to do;
    * ``finish_switch`` — it runs a slot it only tried: the switch is finished (confirmed or
      rolled back) before anything is fetched, as a fetch could take its only good slot;
    * ``fetch`` — fetch it into ``slot``: neither running nor a fallback (``Reimage.distribute``
      answers ``verified`` instead when that slot already holds it, proved and unchanged).
    """
    record = record or {}
    booted = now.booted
    if booted is None:
        raise ReimageError("no slot holds the running root file system; cannot tell which slot is free to write")
    fallback = ", ".join(f"slot {name} ({where})" for name, where in sorted(now.fallbacks.items()))
    if booted.name not in now.fallbacks or (record.get("slot") == booted.name and record.get("phase") == TRIED):
        return {"action": FINISH_SWITCH, "slot": booted.name, "device": booted.device,
                "reason": f"runs slot {booted.name}, which it only tried (it falls back to {fallback}): the "
                          "switch is finished (health check, then confirm or roll back) before anything is fetched"}
    if now.pending and now.pending != booted.name:
        # Armed to boot once: a reboot in the middle of a fetch would start a half-written slot.
        slot = now.slot(now.pending)
        return {"action": FINISH_SWITCH, "slot": slot.name, "device": slot.device,
                "reason": f"slot {slot.name} is armed to boot once at the next boot: the switch is finished (or the "
                          "try dropped) before anything is fetched"}
    if (record.get("info_hash"), record.get("phase"), record.get("slot")) == (info_hash, CONFIRMED, booted.name):
        return {"action": CURRENT, "slot": booted.name, "device": booted.device,
                "reason": f"runs {record.get('name')} on slot {booted.name}, confirmed"}
    free = [s for s in now.slots if not s.booted and s.name not in now.fallbacks]
    if not free:
        others = sorted(set(now.fallbacks) - {booted.name})
        raise ReimageError(f"no slot can take the release: slot {booted.name} runs and "
                           f"{', '.join(others)} is what a boot falls back to")
    same = [s for s in free if record.get("info_hash") == info_hash and record.get("slot") == s.name]
    target = (same or free)[0]
    return {"action": FETCH, "slot": target.name, "device": target.device,
            "reason": f"slot {target.name} is neither running nor a fallback"}


def check_step(record, phase: str, now: Situation) -> None:
    """Refuse a move of the record the terminal's facts do not allow (one line why)."""
    if record is None:
        raise ReimageError("no reimage on this terminal yet; run distribute first")
    have = record.get("phase")
    slot = record.get("slot")
    running = now.booted.name if now.booted else ""
    if phase == TRIED:
        if have == ROLLED_BACK and running == slot:
            raise ReimageError(f"slot {slot} was rolled back ({record.get('reason') or 'it failed'}) but still runs: "
                               "it is left by a reboot into the old slot")
        if have not in (VERIFIED, TRIED) and not (have == CONFIRMED and running == slot):
            raise ReimageError(f"slot {slot} is {have}, not verified: it is never booted; run verify first")
    if phase == CONFIRMED:
        if have not in (TRIED, CONFIRMED, VERIFIED):
            raise ReimageError(f"slot {slot} is {have}: only a tried slot is confirmed")
        if running != slot and have == TRIED:
            raise ReimageError(f"came back on slot {running or '?'}, not {slot}: the new image did not boot")
        if running != slot:
            raise ReimageError(f"slot {slot} is not the slot running now ({running or 'none'}): only a slot that "
                               "booted and is healthy is confirmed")
    if phase == ROLLED_BACK and have not in (TRIED, VERIFIED, ROLLED_BACK):
        raise ReimageError(f"slot {slot} is {have}: nothing to roll back")


class Store:
    """The record file: replaced whole (written, flushed, renamed), read as bounded input."""

    def __init__(self, state_dir: str):
        self.path = os.path.join(state_dir, "reimage.json")

    def read(self):
        if not os.path.exists(self.path):
            return None
        try:
            data = json.loads(read_capped(self.path, 1 << 16, "reimage record", error=StateError))
        except (ValueError, StateError) as exc:
            raise StateError(f"{self.path}: unreadable reimage record: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("phase") not in PHASES:
            raise StateError(f"{self.path}: not a reimage record of this version")
        return data

    @contextlib.contextmanager
    def locked(self):
        """Hold the record for a read, a decision and a write: the agent's requests run in
        threads, and the module writes it itself where no agent runs."""
        try:
            fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StateError(f"{self.path}.lock: cannot open: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield self
        finally:
            os.close(fd)

    def write(self, record: dict) -> dict:
        record = dict(record, format=FORMAT, updated=time.time())
        write_atomic(self.path, json.dumps(record, sort_keys=True).encode(), mode=0o600, error=StateError)
        return record


class Reimage:
    """The agent's side of a terminal's reimage: it plans, starts the fetch, takes its own
    verdict, and moves the record. ``settings()`` returns ``(slot definitions, boot
    settings)`` as the agent's config has them now."""

    def __init__(self, session, settings):
        self.session = session
        self.settings = settings
        self.store = Store(session.store.root)

    def _now(self) -> Situation:
        return situation(*self._settings())

    def describe(self) -> dict:
        return describe(self.store, self._now)

    def distribute(self, manifest, **fetch) -> tuple:
        """Plan the release and, when it is to be fetched, record the target and put the
        fetch (idempotent: a re-run finds the same target and the same job)."""
        with self.store.locked():
            return self._distribute(manifest, **fetch)

    def _distribute(self, manifest, **fetch) -> tuple:
        now = self._now()
        record = self.store.read()
        chosen = plan(now, record, manifest.info_hash)
        answer = {"plan": chosen, "situation": now.as_dict()}
        if chosen["action"] != FETCH:
            return dict(answer, record=record, job=self._job(manifest.info_hash)), False
        same = record is not None and (record.get("info_hash"), record.get("slot")) == (manifest.info_hash, chosen["slot"])
        if same and record.get("phase") in (VERIFIED, TRIED) and not self._changed_since(record):
            # Verified (or tried once and back on the old slot, e.g. a run killed before its
            # reboot): nothing to fetch, the slot still holds what was proved.
            return dict(answer, plan=dict(chosen, action=VERIFIED), record=record,
                        job=self._job(manifest.info_hash)), False
        changed = not (same and record.get("phase") == FETCHING)
        if changed:
            # Written before the fetch: a crash from here on leaves a record naming the slot
            # being written, never one that calls it verified.
            record = self.store.write({"info_hash": manifest.info_hash, "name": manifest.name, "slot": chosen["slot"],
                                       "device": chosen["device"], "phase": FETCHING, "digest": "", "reason": ""})
        job = self.session.job(manifest.info_hash)
        if job is not None and job.final and os.path.abspath(job.path) != os.path.abspath(chosen["device"]):
            self.session.forget(manifest.info_hash)  # an earlier release's job of another slot
        snap, job_changed = self.session.put_fetch(manifest, chosen["device"], require_device=True, **fetch)
        return dict(answer, record=record, job=snap.as_dict()), changed or job_changed

    def verify(self) -> tuple:
        with self.store.locked():
            return self._verify()

    def _verify(self) -> tuple:
        """Take the agent's own verdict on the slot: the whole-image digest its fetch proved,
        still bound to the slot (the ledger's entry is clean and the fingerprint unchanged).
        A slot changed since is verified again by a fetch job (it keeps what matches, repairs
        the rest, proves the digest): never by a second read from the playbook."""
        record = self.store.read()
        if record is None:
            raise ReimageError("no reimage on this terminal yet; run distribute first")
        ih = record["info_hash"]
        answer = {"record": record, "job": self._job(ih), "pending": False, "verified": False}
        if record["phase"] in (TRIED, CONFIRMED) or (record["phase"] == VERIFIED and not self._changed_since(record)):
            return dict(answer, verified=True), False
        if record["phase"] not in (FETCHING, VERIFIED):
            return dict(answer, reason=f"slot {record['slot']} was {record['phase']}; run distribute again"), False
        job = self.session.job(ih)
        if job is None:
            return dict(answer, reason=f"no fetch of {record['name']} on this terminal; run distribute again"), False
        if job.state in ("failed", "stopped"):
            return dict(answer, reason=f"the fetch of {record['name']} {job.state}: {job.error or 'stopped'}"), False
        if job.state not in ("verified", "seeding") or not job.digest:
            return dict(answer, pending=True), False
        why = self._changed_since(record)
        if why:
            # The same fetch again, with the options it was put with (its job record's), reading
            # the slot in place whatever the disk's speed: verifying it needs that read anyway,
            # and only the pieces that changed cross the network.
            put = self.session.store.read_record(ih) or {}
            manifest = Manifest.load(self.session.store.path(ih, ".manifest.json"))
            self.session.forget(ih)
            snap, _changed = self.session.put_fetch(
                manifest, record["device"], put.get("trackers", []), [tuple(p) for p in put.get("peers", [])],
                bool(put.get("seed_after")), float(put.get("stall_timeout") or 0), True,
                True, "always")
            return dict(answer, job=snap.as_dict(), pending=True, reason=f"verifying again: {why}"), True
        record = self.store.write(dict(record, phase=VERIFIED, digest=job.digest, reason=""))
        return dict(answer, record=record, verified=True), True

    def _changed_since(self, record) -> str:
        """``""`` when the slot still holds what its record's release proved, else why not."""
        ledger = self.session.ledger
        entry = ledger.entry(record["device"]) if ledger is not None else None
        if entry is None or entry.info_hash != record["info_hash"]:
            return f"no verified entry for slot {record['slot']} in the slot ledger"
        try:
            now = identity.of_path(record["device"])
        except OSError as exc:
            return f"{record['device']}: {exc.strerror}"
        return slot_defs.still_clean(entry, now)

    def move(self, phase: str, reason: str = "") -> tuple:
        with self.store.locked():
            if phase == TRIED:
                record = self.store.read()
                why = self._changed_since(record) if record and record.get("phase") == VERIFIED else ""
                if why:
                    raise ReimageError(f"slot {record['slot']} is not booted: {why}; run verify again")
            return move(self.store, self._settings, phase, reason, stop_serving=self._stop_serving)

    def _settings(self):
        definitions, boot_settings = self.settings()
        if not definitions:
            raise ReimageError("this agent has no slots in its config (slots:, from the inventory's p2pfleet_slots); "
                               "it cannot take part in a reimage")
        return definitions, boot_settings

    def _stop_serving(self, record) -> None:
        """The slot is about to be booted: its release's job (seeding it since its fetch) lets go of it."""
        if self.session.job(record["info_hash"]) is not None:
            self.session.forget(record["info_hash"])

    def _job(self, info_hash):
        snap = self.session.job(info_hash)
        return snap.as_dict() if snap is not None else None


def describe(store: Store, now) -> dict:
    """The record and the slots as they are (``now()`` reads them; its error is reported)."""
    answer = {"record": store.read()}
    try:
        answer["situation"] = now().as_dict()
    except P2PFleetError as exc:
        answer["error"] = str(exc)
    return answer


def move(store: Store, settings, phase: str, reason: str = "", stop_serving=None, dry_run: bool = False) -> tuple:
    """Take the switch one step, in the boot environment and in the record together, after
    ``check_step`` allows it; ``settings()`` returns ``(slot definitions, boot settings)``.

    * ``tried`` — boot the record's slot once at the next boot (``stop_serving(record)``
      first: whatever serves the slot lets go of it) and record it; the answer's ``reboot``
      says a reboot is due. A terminal that runs the slot already (a run stopped after its
      reboot) or runs it confirmed is left as it is: no reboot.
    * ``confirmed`` — make the slot the default, only while it is the slot running.
    * ``rolled_back`` — drop the slot's one-shot and record why; ``reboot`` when the terminal
      runs the slot (a reboot goes back to the old one). When the boot environment already
      has the slot as its default (only recording the switch failed), it is recorded
      ``confirmed`` instead and ``kept`` is true.

    Used by the agent, and by the ``reimage`` module itself on a system that has no agent (a
    new slot booted before the roles installed one into it): the record is on the state
    partition, which every slot shares. The caller holds ``store.locked()``. ``dry_run``
    (check mode): the same checks and answer, nothing written, nothing stopped.
    """
    if phase not in (TRIED, CONFIRMED, ROLLED_BACK):
        raise ReimageError(f"step must be distribute, verify, tried, confirmed or rolled_back, got {phase!r}")
    definitions, boot_settings = settings()
    now = situation(definitions, boot_settings)
    record = store.read()
    slot = now.slot((record or {}).get("slot"))
    running = now.booted is not None and slot is not None and now.booted.name == slot.name
    if phase == ROLLED_BACK and running and slot.name in now.fallbacks:
        phase = CONFIRMED  # the boot environment made the switch; only its record is missing
        answer = {"kept": True}
    else:
        answer = {"kept": False}
    check_step(record, phase, now)
    if slot is None:
        raise ReimageError(f"slot {record.get('slot')!r} of the reimage record is not one of this terminal's slots")
    backend = boot_env.from_settings(boot_settings)
    changed = False
    if phase == TRIED and not running:
        if stop_serving is not None and not dry_run:
            stop_serving(record)
        boot_env.check_change(definitions, slot.name, "next")
        changed = backend.try_next(slot.entry, dry_run=dry_run)
    elif phase == TRIED and record["phase"] == CONFIRMED:
        phase = CONFIRMED  # runs it, confirmed: nothing to try
    elif phase == CONFIRMED:
        boot_env.check_change(definitions, slot.name, "confirmed")
        changed = backend.confirm(slot.entry, dry_run=dry_run)
    elif phase == ROLLED_BACK:
        changed = backend.reject(slot.entry, dry_run=dry_run)
    if record["phase"] != phase or (phase == ROLLED_BACK and record.get("reason") != reason):
        record = dict(record, phase=phase, reason=reason if phase == ROLLED_BACK else "")
        record = record if dry_run else store.write(record)
        changed = True
    answer.update(record=record, situation=(now if dry_run else situation(definitions, boot_settings)).as_dict(),
                  reboot=(phase == TRIED and not running) or (phase == ROLLED_BACK and running))
    return answer, changed


def outcome(record, release: str, booted: str = "", fallback=None) -> tuple:
    """``(outcome, why)`` of a terminal's reimage for the release ``release`` (info-hash),
    from its record, the slot running now and (when known) the slots a boot falls back to:
    ``switched`` only when it runs the release from the slot it was written to, confirmed
    in the record and in the boot environment."""
    if not record:
        return "not reimaged", "no reimage on this terminal yet"
    name, phase, slot = record.get("name", "?"), record.get("phase"), record.get("slot")
    if release and record.get("info_hash") != release:
        if phase == TRIED:
            return "not switched", f"finishing the switch to {name} first (slot {slot} tried)"
        return "not switched", f"holds {name} ({phase}), not this release"
    if phase == CONFIRMED:
        if booted and booted != slot:
            return "not switched", f"confirmed on slot {slot} but runs slot {booted}"
        if fallback is not None and slot not in fallback:
            return "not switched", f"runs {name} on slot {slot}, but a boot falls back to {', '.join(fallback)}"
        return "switched", f"runs {name} on slot {slot}, confirmed"
    if phase == ROLLED_BACK:
        return "rolled back", record.get("reason") or "the new slot failed"
    if phase in (VERIFIED, TRIED):
        return "not switched", f"slot {slot} verified, not switched"
    return "not switched", f"slot {slot} not verified ({phase})"
