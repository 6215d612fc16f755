"""Which slot a release goes into, and which moves of a terminal's reimage its facts allow:
the pure rules of engine/reimage.py, one test per rule."""
import re

import pytest

from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.reimage import (CONFIRMED, CURRENT, FETCH, FETCHING, FINISH_SWITCH, ROLLED_BACK, TRIED, VERIFIED,
                            ReimageError, Situation, check_step, plan)
from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.slots import Slot

RELEASE = "a" * 40
OLDER = "b" * 40


def situation(booted="A", fallbacks=("A",), names=("A", "B"), pending=""):
    slots = tuple(Slot(n, f"/dev/sd{n.lower()}", 1 << 30, i, n == booted, {"name": n}) for i, n in enumerate(names))
    return Situation(slots, next((s for s in slots if s.booted), None), {n: "GRUB saved_entry" for n in fallbacks},
                     pending)


def record(phase, slot="B", info_hash=RELEASE):
    return {"info_hash": info_hash, "name": "r.img", "slot": slot, "device": f"/dev/sd{slot.lower()}", "phase": phase}


def test_a_release_goes_into_the_slot_that_is_neither_running_nor_a_fallback():
    assert plan(situation(), None, RELEASE)["slot"] == "B"
    assert plan(situation(booted="B", fallbacks=("B",)), None, RELEASE)["slot"] == "A"


def test_a_terminal_running_the_release_confirmed_is_left_alone():
    chosen = plan(situation(booted="B", fallbacks=("B",)), record(CONFIRMED), RELEASE)
    assert chosen["action"] == CURRENT and chosen["slot"] == "B"


def test_a_confirmed_older_release_is_no_reason_to_stop():
    chosen = plan(situation(booted="B", fallbacks=("B",)), record(CONFIRMED, info_hash=OLDER), RELEASE)
    assert chosen == {**chosen, "action": FETCH, "slot": "A"}


def test_a_terminal_running_a_slot_it_only_tried_gets_nothing_fetched():
    # Killed during switch after the reboot, before confirm: B runs, A is still the fallback.
    # A re-run must not take A (the only good slot), whatever the record says.
    for rec in (record(TRIED), record(VERIFIED), None, record(CONFIRMED, slot="A", info_hash=OLDER)):
        chosen = plan(situation(booted="B", fallbacks=("A",)), rec, RELEASE)
        assert chosen["action"] == FINISH_SWITCH and chosen["slot"] == "B", rec
        assert "falls back to slot A (GRUB saved_entry)" in chosen["reason"]


def test_a_slot_armed_to_boot_once_is_never_a_target():
    # Killed after the switch armed B and before its reboot, then run for another release: a
    # reboot during that fetch would start a half-written slot.
    chosen = plan(situation(booted="A", fallbacks=("A",), pending="B"), record(VERIFIED), OLDER)
    assert chosen["action"] == FINISH_SWITCH and chosen["slot"] == "B", chosen
    assert "armed to boot once" in chosen["reason"]


def test_a_running_slot_recorded_tried_is_finished_even_when_the_boot_environment_half_confirmed_it():
    # Killed between the two writes of a GRUB confirm: B is in the default file, A still saved.
    chosen = plan(situation(booted="B", fallbacks=("A", "B")), record(TRIED), RELEASE)
    assert chosen["action"] == FINISH_SWITCH and chosen["slot"] == "B", chosen


def test_a_record_confirmed_on_a_slot_the_boot_environment_does_not_fall_back_to_is_not_current():
    chosen = plan(situation(booted="B", fallbacks=("A",)), record(CONFIRMED), RELEASE)
    assert chosen["action"] == FINISH_SWITCH, chosen


def test_no_free_slot_is_an_error_naming_the_slots():
    with pytest.raises(ReimageError, match="slot A runs and B is what a boot falls back to"):
        plan(situation(booted="A", fallbacks=("A", "B")), None, RELEASE)


def test_no_running_slot_is_an_error():
    with pytest.raises(ReimageError, match="no slot holds the running root"):
        plan(situation(booted=None), None, RELEASE)


def test_a_re_run_keeps_the_slot_it_chose_among_free_ones():
    now = situation(booted="A", fallbacks=("A",), names=("A", "B", "C"))
    assert plan(now, None, RELEASE)["slot"] == "B"
    assert plan(now, record(FETCHING, slot="C"), RELEASE)["slot"] == "C"
    assert plan(now, record(FETCHING, slot="C", info_hash=OLDER), RELEASE)["slot"] == "B"


@pytest.mark.parametrize("have, step, booted, words", [
    (FETCHING, TRIED, "A", "is fetching, not verified: it is never booted"),
    (VERIFIED, CONFIRMED, "A", "is not the slot running now (A): only a slot that booted and is healthy"),
    (FETCHING, CONFIRMED, "B", "is fetching: only a tried slot is confirmed"),
    (CONFIRMED, ROLLED_BACK, "B", "is confirmed: nothing to roll back"),
])
def test_moves_the_facts_do_not_allow_are_refused(have, step, booted, words):
    with pytest.raises(ReimageError, match=re.escape(words)):
        check_step(record(have), step, situation(booted=booted, fallbacks=("A",)))


def test_moves_the_facts_allow():
    check_step(record(VERIFIED), TRIED, situation())
    check_step(record(TRIED), CONFIRMED, situation(booted="B", fallbacks=("A",)))
    check_step(record(TRIED), ROLLED_BACK, situation())
    with pytest.raises(ReimageError, match="run distribute first"):
        check_step(None, TRIED, situation())


@pytest.mark.parametrize("rec, booted, expected", [
    (record(CONFIRMED), "B", ("switched", "runs r.img on slot B, confirmed")),
    (record(CONFIRMED), "A", ("not switched", "confirmed on slot B but runs slot A")),
    (record(ROLLED_BACK) | {"reason": "came back on slot A"}, "A", ("rolled back", "came back on slot A")),
    (record(VERIFIED), "A", ("not switched", "slot B verified, not switched")),
    (record(FETCHING), "A", ("not switched", "slot B not verified (fetching)")),
    (record(TRIED, info_hash=OLDER), "B", ("not switched", "finishing the switch to r.img first (slot B tried)")),
    (record(CONFIRMED, info_hash=OLDER), "B", ("not switched", "holds r.img (confirmed), not this release")),
    (None, "A", ("not reimaged", "no reimage on this terminal yet")),
])
def test_a_terminals_outcome_says_whether_it_runs_the_release_confirmed_and_why_not(rec, booted, expected):
    from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.reimage import outcome
    assert outcome(rec, RELEASE, booted) == expected


def test_switched_needs_the_boot_environment_to_fall_back_to_the_slot_too():
    from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.reimage import outcome
    assert outcome(record(CONFIRMED), RELEASE, "B", ["B"])[0] == "switched"
    assert outcome(record(CONFIRMED), RELEASE, "B", ["A"]) == (
        "not switched", "runs r.img on slot B, but a boot falls back to A")


class Terminal:
    """A terminal's boot environment as GRUB keeps it (default, one-shot), the slot it runs,
    and its record: enough to take the switch's steps with ``move``."""

    name = "grub"

    def __init__(self, monkeypatch, tmp_path, phase, booted="A", default="A", pending=None):
        from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine import reimage as reimage
        self.booted, self.default, self.pending, self.calls = booted, default, pending, []
        self.store = reimage.Store(str(tmp_path))
        self.store.write(record(phase))
        monkeypatch.setattr(reimage, "situation", lambda _d, _b: situation(
            booted=self.booted, fallbacks=(self.default,), pending=self.pending or ""))
        monkeypatch.setattr(reimage.boot_env, "from_settings", lambda _s: self)
        monkeypatch.setattr(reimage.boot_env, "check_change", lambda *a, **k: self.calls.append(("check",) + a[1:3]))

    def try_next(self, entry, dry_run=False):
        self.calls.append(("try_next", entry))
        changed = self.pending != entry
        self.pending = self.pending if dry_run else entry
        return changed

    def confirm(self, entry, dry_run=False):
        self.calls.append(("confirm", entry))
        changed = (self.default, self.pending) != (entry, None)
        if not dry_run:
            self.default, self.pending = entry, None
        return changed

    def reject(self, entry, dry_run=False):
        self.calls.append(("reject", entry))
        changed = self.pending == entry
        self.pending = None if changed and not dry_run else self.pending
        return changed

    def step(self, phase, reason="", stop_serving=None, dry_run=False):
        from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.reimage import move
        with self.store.locked():
            return move(self.store, lambda: ([], {}), phase, reason, stop_serving=stop_serving, dry_run=dry_run)


def test_tried_lets_the_slot_go_then_arms_it_once_records_it_and_asks_for_a_reboot(monkeypatch, tmp_path):
    t = Terminal(monkeypatch, tmp_path, VERIFIED)
    served = []
    answer, changed = t.step(TRIED, stop_serving=lambda rec: served.append((rec["slot"], list(t.calls))))
    assert changed and answer["reboot"] and answer["record"]["phase"] == TRIED
    assert served == [("B", [])], "the job serving B let go of it before anything else"
    assert t.calls == [("check", "B", "next"), ("try_next", "B")] and t.default == "A"
    again, changed = t.step(TRIED)      # a re-run before the reboot: the same, nothing new
    assert not changed and again["reboot"] and t.pending == "B"


def test_tried_on_a_terminal_that_runs_the_slot_already_asks_for_no_reboot(monkeypatch, tmp_path):
    t = Terminal(monkeypatch, tmp_path, TRIED, booted="B")           # a run stopped after the reboot
    answer, changed = t.step(TRIED)
    assert not changed and not answer["reboot"] and t.calls == []
    t = Terminal(monkeypatch, tmp_path, CONFIRMED, booted="B", default="B")
    answer, changed = t.step(TRIED)
    assert not changed and not answer["reboot"] and answer["record"]["phase"] == CONFIRMED


def test_confirmed_needs_the_slot_running_and_names_where_the_terminal_came_back(monkeypatch, tmp_path):
    t = Terminal(monkeypatch, tmp_path, TRIED, booted="A")
    with pytest.raises(ReimageError, match="came back on slot A, not B: the new image did not boot"):
        t.step(CONFIRMED)
    assert t.default == "A" and t.store.read()["phase"] == TRIED
    t.booted = "B"
    answer, changed = t.step(CONFIRMED)
    assert changed and t.default == "B" and answer["record"]["phase"] == CONFIRMED
    assert ("check", "B", "confirmed") in t.calls


@pytest.mark.parametrize("booted, default, pending, reboot, kept, phase", [
    ("B", "A", None, True, False, ROLLED_BACK),      # runs the new slot, unconfirmed: reboot back to A
    ("A", "A", "B", False, False, ROLLED_BACK),      # never left A: drop the one-shot, no reboot
    ("B", "B", None, False, True, CONFIRMED),        # the boot environment made the switch: kept
])
def test_rolled_back_decides_from_the_facts(monkeypatch, tmp_path, booted, default, pending, reboot, kept, phase):
    t = Terminal(monkeypatch, tmp_path, TRIED, booted=booted, default=default, pending=pending)
    answer, _changed = t.step(ROLLED_BACK, reason="health check failed")
    assert (answer["reboot"], answer["kept"], answer["record"]["phase"]) == (reboot, kept, phase)
    assert t.pending is None and t.default == default
    if phase == ROLLED_BACK:
        assert answer["record"]["reason"] == "health check failed"


def test_a_rolled_back_slot_that_still_runs_is_never_tried_again(monkeypatch, tmp_path):
    t = Terminal(monkeypatch, tmp_path, ROLLED_BACK, booted="B")
    with pytest.raises(ReimageError, match="was rolled back .* but still runs: it is left by a reboot"):
        t.step(TRIED)
    answer, _changed = t.step(ROLLED_BACK, reason="again")
    assert answer["reboot"] and t.calls == [("reject", "B")]


def test_check_mode_says_what_each_step_would_do_and_changes_nothing(monkeypatch, tmp_path):
    t = Terminal(monkeypatch, tmp_path, VERIFIED)
    before = t.store.read()
    answer, changed = t.step(TRIED, stop_serving=lambda rec: pytest.fail("stopped a job in check mode"), dry_run=True)
    assert changed and answer["reboot"] and answer["record"]["phase"] == TRIED
    assert t.pending is None and t.store.read() == before
    with pytest.raises(ReimageError, match="came back on slot A, not B"):
        Terminal(monkeypatch, tmp_path, TRIED).step(CONFIRMED, dry_run=True)
    t = Terminal(monkeypatch, tmp_path, TRIED, booted="B")
    answer, changed = t.step(CONFIRMED, dry_run=True)
    assert changed and t.default == "A" and t.store.read()["phase"] == TRIED
