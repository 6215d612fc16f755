"""Honest fleet status over real HTTP: a row changes only by announces from its own address.

Every announce comes from its own loopback source address (127.0.0.x), as terminals would
from their own machines; the forger is simply another address inside allowed_networks.
"""
import pytest

from helpers.tracker import TrackerProcess, announce, compact_peers, wait_until

HASH = bytes.fromhex("33" * 20)
SIZE = 1000
SERVER, PC01, PC02, FORGER = "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.9"


def pid(name):
    return name.encode().ljust(20, b"-")


def refusal(reply):
    assert b"failure reason" in reply, reply
    return reply[b"failure reason"].decode()


def rows(tracker):
    return {(r["host"] or r["ip"]): r for r in tracker.status(HASH.hex())["peers"]}


@pytest.fixture
def mapped(tmp_path):
    """A tracker as the role renders it: every host bound to its inventory address."""
    proc = TrackerProcess(tmp_path, {
        "info_hashes": [HASH.hex()], "forget_after": 600,
        "hosts": {SERVER: "server", PC01: "pc-01", PC02: "pc-02"},
        "policy": {"seeders": ["server"]},
    })
    yield proc
    proc.stop()


def test_a_forged_completion_for_another_host_is_refused_and_changes_no_row(mapped):
    announce(mapped.url, HASH, pid("server"), 6881, left=0, source=SERVER, event="started", host="server")
    announce(mapped.url, HASH, pid("pc-02"), 6881, left=SIZE // 2, source=PC02, event="started", host="pc-02")
    before = rows(mapped)

    reason = refusal(announce(mapped.url, HASH, pid("forger"), 6881, left=0, source=FORGER,
                              event="completed", host="pc-02"))
    assert reason == f"host pc-02 refused: the tracker's hosts map binds pc-02 to {PC02}, not to {FORGER}"
    # Another inventory host naming pc-02 (or the server) from its own address: refused too.
    reason = refusal(announce(mapped.url, HASH, pid("pc-01"), 6881, left=0, source=PC01, host="pc-02"))
    assert reason == f"host pc-02 refused: this address, {PC01}, is pc-01 in the tracker's hosts map"
    assert "refused" in refusal(announce(mapped.url, HASH, pid("pc-01"), 6881, left=0, source=PC01,
                                         event="started", host="server"))

    after = rows(mapped)
    assert set(after) == {"server", "pc-02"}
    assert (after["pc-02"]["left"], after["pc-02"]["state"]) == (SIZE // 2, "downloading")
    assert after["pc-02"]["verified"] and after["pc-02"]["ip"] == PC02
    assert after["server"] == {**before["server"], "seen_ago": after["server"]["seen_ago"]}
    totals = mapped.status(HASH.hex())["totals"]
    assert (totals["complete"], totals["completed_events"], totals["origins"]) == (0, 0, 1)
    assert mapped.metric('p2pfleet_tracker_announces_total{result="failed"}') == 3
    refused = [line for line in mapped.log_lines() if "refused: host" in line]
    assert len(refused) == 1 and f"announce from {FORGER} refused: host pc-02" in refused[0], refused

    # A bound host is named by its address, with or without host=; it is no origin.
    announce(mapped.url, HASH, pid("pc-01"), 6881, left=SIZE, source=PC01, event="started")
    assert (rows(mapped)["pc-01"]["origin"], rows(mapped)["pc-01"]["verified"]) == (False, True)


def test_a_terminals_peer_id_from_another_address_does_not_remove_fail_or_hide_its_row(mapped):
    announce(mapped.url, HASH, pid("server"), 6881, left=0, source=SERVER, event="started")
    announce(mapped.url, HASH, pid("pc-01"), 6881, left=SIZE, source=PC01, event="started")
    victim = pid("pc-02")
    announce(mapped.url, HASH, victim, 6881, left=SIZE // 2, source=PC02, event="started")

    # The forger knows pc-02's peer id (say, from a client that printed it) and sends it
    # with every event, from its own address, on pc-02's port too.
    for event in ("started", "completed", "stopped"):
        announce(mapped.url, HASH, victim, 6881, left=0, source=FORGER, event=event)
    announce(mapped.url, HASH, victim, 6881, left=0, source=FORGER, event="stopped",
             p2pfleet_error="fetch failed: forged")

    table = rows(mapped)
    assert (table["pc-02"]["state"], table["pc-02"]["left"], table["pc-02"]["error"]) == \
        ("downloading", SIZE // 2, None)
    assert table[FORGER]["state"] == "failed" and not table[FORGER]["verified"]
    # pc-02 is still handed out: to its fellow terminal, and by the origin's fan-out.
    reply = announce(mapped.url, HASH, pid("pc-01"), 6881, left=SIZE, source=PC01)
    assert (PC02, 6881) in compact_peers(reply[b"peers"])
    # Its own stop still ends its row.
    announce(mapped.url, HASH, victim, 6881, left=SIZE // 2, source=PC02, event="stopped")
    assert rows(mapped)["pc-02"]["state"] == "stopped"


def test_without_a_hosts_map_a_name_stays_with_the_first_address_that_uses_it(tmp_path):
    tracker = TrackerProcess(tmp_path, {"info_hashes": [HASH.hex()], "interval": 1, "min_interval": 1,
                                        "expiry_intervals": 1, "forget_after": 3})
    try:
        announce(tracker.url, HASH, pid("pc-02"), 6881, left=SIZE // 2, source=PC02, event="started", host="pc-02")
        reason = refusal(announce(tracker.url, HASH, pid("forger"), 6881, left=0, source=FORGER,
                                  event="completed", host="pc-02"))
        assert reason.startswith(f"host pc-02 refused: pc-02 announces from {PC02}, not {FORGER}"), reason
        table = rows(tracker)
        assert set(table) == {"pc-02"} and table["pc-02"]["left"] == SIZE // 2
        assert not table["pc-02"]["verified"]

        # Once pc-02 has been silent long enough to be forgotten, the name is free again.
        wait_until(lambda: "pc-02" not in rows(tracker), 15, "pc-02 forgotten after forget_after", interval=0.5)
        wait_until(lambda: b"failure reason" not in announce(tracker.url, HASH, pid("new"), 6881, left=0,
                                                             source=FORGER, host="pc-02"),
                   10, "pc-02 free for another address", interval=0.5)
        assert rows(tracker)["pc-02"]["ip"] == FORGER
    finally:
        tracker.stop()
