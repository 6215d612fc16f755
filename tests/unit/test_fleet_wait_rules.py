"""The fleet wait's rules (engine/tracker/fleet.py) on statuses of a real Tracker, with one
fake clock for both: who is done, dropped (and why), missing; whole-fleet stalls naming what
went away; tracker outages under a grace budget; the progress line."""
import pytest

from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.tracker.fleet import FleetWait, WaitFailed, clock_time, rows_by_host
from test_tracker_state import HASH, SIZE, announce, make

WALL = 5000.0       # make()'s tracker wall clock


def fleet(terminals=("pc-1", "pc-2", "pc-3"), drop_after=60, stall_timeout=120, tracker_grace=30, timeout=0):
    tracker, clock = make()
    tracker.register(HASH, "release-2", SIZE)
    wait = FleetWait(terminals, drop_after, stall_timeout, tracker_grace, timeout, clock(), WALL)
    return tracker, clock, wait


def host_ip(name):
    return f"10.2.0.{name.split('-')[1]}"


def say(tracker, clock, name, left, event=""):
    announce(tracker, clock, host_ip(name), name.encode(), left, event, host=name)


def origin(tracker, clock):
    announce(tracker, clock, "10.0.0.1", b"origin", 0, host="server")


def read(tracker, clock, wait):
    events = wait.read(tracker.swarms[HASH].status(clock(), WALL), clock())
    return events, wait.verdict(clock())


def step(tracker, clock, wait, seconds, lefts, with_origin=True):
    """``seconds`` later: the origin and every host in ``lefts`` announce, the tracker
    expires, the wait reads."""
    clock.now += seconds
    if with_origin:
        origin(tracker, clock)
    for name, left in lefts.items():
        say(tracker, clock, name, left)
    tracker.expire()
    return read(tracker, clock, wait)


def test_a_terminal_silent_at_40_percent_is_dropped_while_the_others_finish():
    tracker, clock, wait = fleet()
    origin(tracker, clock)
    for name in ("pc-1", "pc-2", "pc-3"):
        say(tracker, clock, name, SIZE, "started")
    step(tracker, clock, wait, 5, {"pc-1": 600, "pc-2": 600, "pc-3": 600})
    silent_at = clock()
    for left in (400, 200, 0):
        events, finished = step(tracker, clock, wait, 10, {"pc-1": left, "pc-2": left})
        assert not finished and events == []
    # pc-3 went silent at 40 %: 30 s quiet so far, the others done. Not yet dropped.
    assert wait.waiting() == ["pc-3"] and "not heard from: pc-3" in wait.line(clock())
    events, finished = step(tracker, clock, wait, 31, {"pc-1": 0, "pc-2": 0})
    reason = f"silent since 40 % ({clock_time(WALL - (clock() - silent_at))})"
    assert finished and events == [f"pc-3 dropped from the wait: {reason}"]
    assert wait.outcome() == {"done": ["pc-1", "pc-2"], "dropped": {"pc-3": reason}, "missing": []}
    assert f"2/3 terminals done · 1 dropped: pc-3 ({reason})" in wait.line(clock())
    assert " 100.0 % " in wait.line(clock())


def test_a_terminal_announcing_without_progress_is_dropped_while_another_progresses():
    tracker, clock, wait = fleet(terminals=("pc-1", "pc-2"))
    step(tracker, clock, wait, 1, {"pc-1": SIZE, "pc-2": 600})
    for second in range(1, 8):
        events, finished = step(tracker, clock, wait, 10, {"pc-1": SIZE - 100 * second, "pc-2": 600})
    assert events == ["pc-2 dropped from the wait: no progress since 40 % for 70 s"] and not finished
    assert wait.waiting() == ["pc-1"]


def test_a_terminal_never_announced_is_missing_and_dropped_after_drop_after_from_the_start():
    tracker, clock, wait = fleet(terminals=("pc-1", "pc-2"))
    step(tracker, clock, wait, 30, {"pc-1": 500})
    events, finished = step(tracker, clock, wait, 31, {"pc-1": 0})
    assert finished and events == ["pc-2 dropped from the wait: never announced"]
    assert wait.outcome() == {"done": ["pc-1"], "dropped": {"pc-2": "never announced"}, "missing": ["pc-2"]}


def test_a_dropped_terminal_that_gets_the_image_before_the_end_is_done():
    tracker, clock, wait = fleet(terminals=("pc-1", "pc-2"))
    step(tracker, clock, wait, 1, {"pc-1": SIZE, "pc-2": 600})
    step(tracker, clock, wait, 61, {"pc-1": 500, "pc-2": 600})
    assert "pc-2" in wait.dropped
    events, _ = step(tracker, clock, wait, 1, {"pc-1": 400, "pc-2": 0})
    assert events == ["pc-2 was dropped and holds the image now"] and wait.outcome()["dropped"] == {}


def test_the_whole_fleet_stalls_when_the_origin_goes_and_the_line_names_the_origin():
    tracker, clock, wait = fleet()
    step(tracker, clock, wait, 1, {"pc-1": 13, "pc-2": 13, "pc-3": 13})
    for _ in range(12):     # 120 s: nobody is dropped, since nobody progresses
        events, finished = step(tracker, clock, wait, 10, {"pc-1": 13, "pc-2": 13, "pc-3": 13}, with_origin=False)
        assert events == [] and not finished
    with pytest.raises(WaitFailed) as failed:
        step(tracker, clock, wait, 1, {"pc-1": 13, "pc-2": 13, "pc-3": 13}, with_origin=False)
    message = str(failed.value)
    assert message == (f"fleet_wait: no terminal progressed for 121 s (stall_timeout 120 s): the origin server "
                       f"(10.0.0.1) went silent at {clock_time(WALL - 121)}; 3 terminals waiting at 98.7 %")
    assert "pc-" not in message and wait.dropped == {}


def test_a_stall_with_the_origin_seeding_names_the_terminals():
    tracker, clock, wait = fleet(terminals=("pc-1",))
    step(tracker, clock, wait, 1, {"pc-1": 500})
    with pytest.raises(WaitFailed, match=r"the origin server is seeding and the tracker answers; waiting for "
                                         r"pc-1 \(no progress since 50 % for 130 s\)$"):
        for _ in range(13):
            step(tracker, clock, wait, 10, {"pc-1": 500})


def test_a_tracker_briefly_away_is_ridden_out_and_its_time_counts_for_nobody():
    tracker, clock, wait = fleet(terminals=("pc-1", "pc-2"), tracker_grace=100)
    step(tracker, clock, wait, 1, {"pc-1": 800, "pc-2": 800})
    clock.now += 1
    assert wait.unreachable("connection refused", clock(), WALL + 2) == [
        f"tracker unreachable since {clock_time(WALL + 2)}: connection refused"]
    for _ in range(9):      # 90 s away: more than drop_after, less than tracker_grace
        clock.now += 10
        assert wait.unreachable("connection refused", clock(), WALL) == [] and wait.verdict(clock()) is False
    assert f"tracker unreachable since {clock_time(WALL + 2)} (90 s of 100 s grace): connection refused" \
        in wait.line(clock())
    # Back (a restart: the rows come back as the agents announce); pc-2 made no progress.
    events, finished = step(tracker, clock, wait, 1, {"pc-1": 300, "pc-2": 800})
    assert events == [f"tracker back after 91 s (unreachable since {clock_time(WALL + 2)})"]
    assert wait.dropped == {} and not finished


def test_a_tracker_away_longer_than_the_grace_fails_the_wait_with_one_line():
    tracker, clock, wait = fleet(tracker_grace=30)
    clock.now += 1
    wait.unreachable("<urlopen error [Errno 111] Connection refused>", clock(), WALL)
    clock.now += 31
    wait.unreachable("<urlopen error [Errno 111] Connection refused>", clock(), WALL + 31)
    with pytest.raises(WaitFailed) as failed:
        wait.verdict(clock())
    assert str(failed.value) == (f"fleet_wait: tracker unreachable since {clock_time(WALL)} (31 s, more than "
                                 f"tracker_grace 30 s): <urlopen error [Errno 111] Connection refused>")


def test_a_failure_during_the_wait_drops_at_once_and_all_failed_fails():
    tracker, clock, wait = fleet(terminals=("pc-1", "pc-2"))
    step(tracker, clock, wait, 1, {"pc-1": 500, "pc-2": 500})
    clock.now += 1
    announce(tracker, clock, "10.2.0.2", b"report", 500, "stopped", host="pc-2", error="fetch failed: disk")
    events, finished = read(tracker, clock, wait)
    assert events == [f"pc-2 dropped from the wait: failed at 50 % ({clock_time(WALL)}): fetch failed: disk"]
    announce(tracker, clock, "10.2.0.1", b"report", 500, "stopped", host="pc-1", error="fetch failed: disk")
    with pytest.raises(WaitFailed, match=r"^fleet_wait: no terminal holds the image; dropped: pc-2 \(failed"):
        read(tracker, clock, wait)


def test_drop_after_0_waits_for_every_terminal_and_timeout_caps_the_wait():
    tracker, clock, wait = fleet(terminals=("pc-1", "pc-2"), drop_after=0, stall_timeout=0, timeout=300)
    step(tracker, clock, wait, 1, {"pc-1": 0})
    for _ in range(29):
        assert step(tracker, clock, wait, 10, {"pc-1": 0})[1] is False
    assert wait.dropped == {}
    with pytest.raises(WaitFailed, match=r"after 300 s \(timeout\); waiting for pc-2$"):
        step(tracker, clock, wait, 10, {"pc-1": 0})


def test_rows_by_host_takes_the_row_its_host_announced_from_last():
    status = {"peers": [
        {"host": "server", "origin": True, "seen_ago": 0},
        {"host": "pc-1", "ip": "10.0.0.5", "seen_ago": 40.0, "state": "silent"},
        {"host": "pc-1", "ip": "10.9.0.5", "seen_ago": 1.0, "state": "downloading"},
        {"host": None, "ip": "10.0.0.7", "seen_ago": 0},
    ]}
    assert {h: r["ip"] for h, r in rows_by_host(status).items()} == {"pc-1": "10.9.0.5"}


def test_a_failure_from_before_the_wait_is_an_earlier_runs_and_waits_like_silence():
    tracker, clock = make()
    tracker.register(HASH, "release-2", SIZE)
    announce(tracker, clock, "10.2.0.2", b"report", 500, "stopped", host="pc-2", error="fetch failed: disk")
    clock.now += 30
    wait = FleetWait(("pc-1", "pc-2"), 60, 120, 30, 0, clock(), WALL)
    events, _ = step(tracker, clock, wait, 1, {"pc-1": 900})
    assert events == [] and wait.dropped == {}
    # The re-run's job announces: its new row replaces the failed one, and it is waited for.
    events, _ = step(tracker, clock, wait, 1, {"pc-1": 800, "pc-2": 500})
    assert events == [] and wait.waiting() == ["pc-1", "pc-2"]
