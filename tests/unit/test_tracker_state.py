import ipaddress
import random

import pytest

from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.tracker import config
from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.tracker.announce import Announce
from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.tracker.hostnames import HostRefused
from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.tracker.state import Tracker

HASH = b"h" * 20
SIZE = 1000


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def make(hosts=None, **policy):
    cfg = config.parse({
        "allowed_networks": ["10.0.0.0/8"], "interval": 10, "info_hashes": [HASH.hex()],
        "hosts": hosts or {"10.1.0.9": "pc-9"},
        "groups": {"room1": {"networks": ["10.1.0.0/24"]}, "room2": {"networks": ["10.2.0.0/24"]}},
        "policy": {"seeders": ["10.0.0.1"], **policy},
    })
    clock = Clock()
    tracker = Tracker(cfg, rng=random.Random(0), clock=clock, wall_clock=lambda: 5000.0)
    return tracker, clock


def announce(tracker, clock, ip, peer, left, event="", up=0, down=0, host=None, numwant=50, error=None, port=6881):
    req = Announce(info_hash=HASH, peer_id=peer.ljust(20, b".")[:20], port=port, uploaded=up,
                   downloaded=down, left=left, event=event, numwant=numwant, compact=True,
                   host=host, error=error)
    return tracker.announce(tracker.swarms[HASH], req, ipaddress.ip_address(ip))


def peers_of(status):
    return {row["host"] or row["ip"]: row for row in status["peers"]}


def test_rates_come_from_consecutive_announces_and_reset_on_restart():
    tracker, clock = make()
    announce(tracker, clock, "10.1.0.2", b"a", SIZE, "started")
    clock.now += 10
    announce(tracker, clock, "10.1.0.2", b"a", SIZE - 500, up=100, down=500)
    row = peers_of(tracker.swarms[HASH].status(clock(), 5000.0))["10.1.0.2"]
    assert (row["download_rate"], row["upload_rate"]) == (50.0, 10.0)
    clock.now += 10
    announce(tracker, clock, "10.1.0.2", b"a", SIZE - 500, "started", up=0, down=0)
    row = peers_of(tracker.swarms[HASH].status(clock(), 5000.0))["10.1.0.2"]
    assert (row["download_rate"], row["upload_rate"]) == (0.0, 0.0)


def test_host_names_from_config_map_or_announce_and_fleet_totals():
    tracker, clock = make()
    tracker.register(HASH, "lab-image", SIZE)
    announce(tracker, clock, "10.0.0.1", b"origin", 0, "started", host="server")
    announce(tracker, clock, "10.1.0.9", b"nine", 250, "started")
    announce(tracker, clock, "10.2.0.3", b"three", 750, "started", host="pc-3")
    status = tracker.swarms[HASH].status(clock(), 5000.0)
    rows = peers_of(status)
    assert rows["server"]["state"] == "seeding" and rows["server"]["origin"]
    assert rows["pc-9"]["progress"] == 0.75 and rows["pc-9"]["group"] == "room1"
    assert rows["pc-3"]["progress"] == 0.25 and rows["pc-3"]["group"] == "room2"
    assert rows["pc-9"]["verified"] and not rows["pc-3"]["verified"]
    totals = status["totals"]
    assert (totals["terminals"], totals["bytes_total"], totals["bytes_left"]) == (2, 2000, 1000)
    assert totals["progress"] == 0.5 and totals["origins"] == 1


def test_the_fleet_page_tells_bytes_fetched_from_bytes_a_terminal_took_from_its_own_disks():
    tracker, clock = make()
    tracker.register(HASH, "release-2", SIZE)
    announce(tracker, clock, "10.0.0.1", b"origin", 0, "started", up=300)
    # Took 900 bytes from its own slots before joining, fetched 100: complete.
    announce(tracker, clock, "10.1.0.2", b"delta", 0, "completed", down=100)
    # Holds 400 bytes, all fetched.
    announce(tracker, clock, "10.1.0.3", b"full", 600, "started", down=400)
    status = tracker.swarms[HASH].status(clock(), 5000.0)
    rows = peers_of(status)
    assert (rows["10.1.0.2"]["downloaded"], rows["10.1.0.2"]["local"]) == (100, 900)
    assert (rows["10.1.0.3"]["downloaded"], rows["10.1.0.3"]["local"]) == (400, 0)
    assert rows["10.0.0.1"]["local"] == 0
    assert (status["totals"]["bytes_fetched"], status["totals"]["bytes_local"]) == (500, 900)


def test_silent_peers_expire_after_missed_intervals_and_are_forgotten_later():
    tracker, clock = make()
    announce(tracker, clock, "10.1.0.2", b"a", SIZE, "started")
    announce(tracker, clock, "10.1.0.3", b"b", SIZE, "started")
    clock.now += 15
    announce(tracker, clock, "10.1.0.3", b"b", SIZE)
    clock.now += 6           # a: 21 s silent, more than 2 intervals of 10 s
    tracker.expire()
    rows = peers_of(tracker.swarms[HASH].status(clock(), 5000.0))
    assert rows["10.1.0.2"]["state"] == "silent" and rows["10.1.0.3"]["state"] == "downloading"
    response = announce(tracker, clock, "10.1.0.3", b"b", SIZE)
    assert response["peers"] == b"" and response["incomplete"] == 1
    clock.now += 3600
    tracker.expire()
    assert "10.1.0.2" not in peers_of(tracker.swarms[HASH].status(clock(), 5000.0))


def test_stopped_peer_leaves_the_peer_lists_and_completed_counts_once():
    tracker, clock = make()
    announce(tracker, clock, "10.1.0.2", b"a", SIZE, "started")
    announce(tracker, clock, "10.1.0.3", b"b", 0, "completed")
    announce(tracker, clock, "10.1.0.3", b"b", 0, "completed")
    assert tracker.swarms[HASH].scrape() == {"complete": 1, "downloaded": 1, "incomplete": 1}
    announce(tracker, clock, "10.1.0.3", b"b", 0, "stopped")
    response = announce(tracker, clock, "10.1.0.2", b"a", SIZE)
    assert response["peers"] == b""
    assert peers_of(tracker.swarms[HASH].status(clock(), 5000.0))["10.1.0.3"]["state"] == "stopped"


def test_a_reported_failure_marks_the_peer_at_that_address_failed_with_its_reason():
    tracker, clock = make()
    swarm = tracker.swarms[HASH]
    announce(tracker, clock, "10.0.0.1", b"lt-random-id", 0, "started", host="server")
    announce(tracker, clock, "10.1.0.2", b"a", SIZE, "started")
    # The engine's report carries another peer id than libtorrent's: matched by address and port.
    clock.now += 1
    assert announce(tracker, clock, "10.0.0.1", b"report", 0, "stopped", host="server",
                    error="seed failed: piece 5 does not match")["peers"] == b""
    status = swarm.status(clock(), 5000.0)
    row = peers_of(status)["server"]
    assert (row["state"], row["error"], row["origin"]) == ("failed", "seed failed: piece 5 does not match", True)
    assert status["totals"]["failed"] == 1 and status["totals"]["origins"] == 0
    assert peers_of(status)["10.1.0.2"]["error"] is None
    # The downloader is no longer offered the failed seeder.
    assert announce(tracker, clock, "10.1.0.2", b"a", SIZE)["peers"] == b""
    # libtorrent's own event=stopped coming after the report changes nothing.
    announce(tracker, clock, "10.0.0.1", b"lt-random-id", 0, "stopped", host="server")
    assert peers_of(swarm.status(clock(), 5000.0))["server"]["state"] == "failed"


def test_a_failure_reported_after_the_stop_or_by_an_unknown_peer_is_still_shown_once():
    tracker, clock = make()
    swarm = tracker.swarms[HASH]
    announce(tracker, clock, "10.1.0.3", b"lt", 0, "started")
    announce(tracker, clock, "10.1.0.3", b"lt", 0, "stopped")
    announce(tracker, clock, "10.1.0.3", b"report", 0, "stopped", error="seed failed: piece 7")
    announce(tracker, clock, "10.1.0.4", b"report", 0, "stopped", error="seed failed: cannot read")
    rows = peers_of(swarm.status(clock(), 5000.0))
    assert (rows["10.1.0.3"]["state"], rows["10.1.0.3"]["error"]) == ("failed", "seed failed: piece 7")
    assert (rows["10.1.0.4"]["state"], rows["10.1.0.4"]["error"]) == ("failed", "seed failed: cannot read")
    assert len(rows) == 2 and swarm.status(clock(), 5000.0)["totals"]["failed"] == 2
    # The job started again at that address: the failed row goes, the new peer is active.
    announce(tracker, clock, "10.1.0.3", b"lt-again", 0, "started")
    rows = peers_of(swarm.status(clock(), 5000.0))
    assert (rows["10.1.0.3"]["state"], rows["10.1.0.3"]["error"]) == ("complete", None)
    # Failed rows are forgotten like stopped ones.
    clock.now += tracker.config.forget_after + 1
    tracker.expire()
    assert "10.1.0.4" not in peers_of(swarm.status(clock(), 5000.0))


def test_client_restart_with_new_peer_id_replaces_the_old_entry():
    tracker, clock = make()
    announce(tracker, clock, "10.1.0.2", b"old", SIZE, "started")
    announce(tracker, clock, "10.1.0.2", b"new", SIZE, "started")
    swarm = tracker.swarms[HASH]
    assert len(swarm.peers) == 1 and len(swarm.status(clock(), 5000.0)["peers"]) == 1


def test_origin_assignment_is_released_when_the_downloader_completes():
    tracker, clock = make(origin_fanout=1)
    announce(tracker, clock, "10.0.0.1", b"origin", 0, "started")
    origin_compact = ipaddress.ip_address("10.0.0.1").packed + (6881).to_bytes(2, "big")
    first = announce(tracker, clock, "10.1.0.2", b"a", SIZE, "started")
    # b is room2's bridge; room1 holds the origin's only slot while it downloads
    second = announce(tracker, clock, "10.2.0.3", b"b", SIZE, "started")
    assert origin_compact in _chunks(first["peers"]) and origin_compact not in _chunks(second["peers"])
    announce(tracker, clock, "10.1.0.2", b"a", 0, "completed")
    second = announce(tracker, clock, "10.2.0.3", b"b", SIZE)
    assert origin_compact in _chunks(second["peers"])


def _chunks(compact):
    return [compact[i:i + 6] for i in range(0, len(compact), 6)]


def test_a_host_name_is_taken_only_from_the_address_it_belongs_to():
    tracker, clock = make()
    swarm = tracker.swarms[HASH]
    # Bound by the config's hosts map: another name from its address, its name from another.
    with pytest.raises(HostRefused, match="host pc-3 refused: this address, 10.1.0.9, is pc-9 in the"):
        announce(tracker, clock, "10.1.0.9", b"nine", 0, host="pc-3")
    with pytest.raises(HostRefused, match="the tracker's hosts map binds pc-9 to 10.1.0.9, not to 10.1.0.66"):
        announce(tracker, clock, "10.1.0.66", b"forger", 0, "completed", host="pc-9")
    # Not in the map: the first address to announce the name holds it.
    announce(tracker, clock, "10.2.0.3", b"three", SIZE, "started", host="pc-3")
    with pytest.raises(HostRefused, match="pc-3 announces from 10.2.0.3, not 10.1.0.66"):
        announce(tracker, clock, "10.1.0.66", b"forger", 0, "completed", host="pc-3")
    rows = swarm.status(clock(), 5000.0)["peers"]
    assert [(r["host"], r["ip"], r["left"], r["verified"]) for r in rows] == [("pc-3", "10.2.0.3", SIZE, False)]
    assert swarm.completed == 0
    # ... while a row of it can exist: stopped, it is held until it would be forgotten.
    announce(tracker, clock, "10.2.0.3", b"three", SIZE, "stopped", host="pc-3")
    clock.now += tracker.config.forget_after
    tracker.expire()
    with pytest.raises(HostRefused):
        announce(tracker, clock, "10.1.0.66", b"forger", 0, host="pc-3")
    clock.now += 1
    tracker.expire()
    announce(tracker, clock, "10.1.0.66", b"moved", 0, host="pc-3")
    assert [(r["host"], r["ip"]) for r in swarm.status(clock(), 5000.0)["peers"]] == [("pc-3", "10.1.0.66")]


def test_a_peer_id_sent_from_another_address_never_touches_the_row_it_belongs_to():
    tracker, clock = make()
    swarm = tracker.swarms[HASH]
    announce(tracker, clock, "10.1.0.9", b"victim", SIZE, "started", down=0)
    for event in ("started", "completed", "stopped"):
        announce(tracker, clock, "10.1.0.66", b"victim", 0, event)
    announce(tracker, clock, "10.1.0.66", b"victim", 0, "stopped", error="fetch failed: forged")
    rows = peers_of(swarm.status(clock(), 5000.0))
    assert (rows["pc-9"]["state"], rows["pc-9"]["left"], rows["pc-9"]["error"]) == ("downloading", SIZE, None)
    assert rows["10.1.0.66"]["state"] == "failed"        # the sender's own row, at its own address
    # Still handed out to the others.
    victim = ipaddress.ip_address("10.1.0.9").packed + (6881).to_bytes(2, "big")
    assert victim in _chunks(announce(tracker, clock, "10.1.0.3", b"other", SIZE, "started")["peers"])


def test_an_origin_is_an_address_never_a_name_a_peer_announces():
    tracker, clock = make(hosts={"10.0.0.1": "server", "10.1.0.9": "pc-9"}, seeders=["server"])
    swarm = tracker.swarms[HASH]
    with pytest.raises(HostRefused, match="host server refused: this address, 10.1.0.9, is pc-9"):
        announce(tracker, clock, "10.1.0.9", b"nine", 0, "started", host="server")
    with pytest.raises(HostRefused, match="binds server to 10.0.0.1, not to 10.1.0.5"):
        announce(tracker, clock, "10.1.0.5", b"five", 0, "started", host="server")
    announce(tracker, clock, "10.1.0.5", b"five", 0, "started", host="origin")
    announce(tracker, clock, "10.0.0.1", b"real", 0, "started")
    rows = peers_of(swarm.status(clock(), 5000.0))
    assert rows["server"]["origin"] and rows["server"]["verified"]
    assert not rows["origin"]["origin"] and swarm.status(clock(), 5000.0)["totals"]["origins"] == 1


def rows_of(swarm, clock):
    return [(r["host"], r["ip"], r["port"], r["state"], r["left"]) for r in swarm.status(clock(), 5000.0)["peers"]]


@pytest.mark.parametrize("how", ["silent", "stopped", "failed", "active"])
def test_a_host_announcing_again_replaces_its_old_row_whatever_its_state(how):
    tracker, clock = make()
    swarm = tracker.swarms[HASH]
    announce(tracker, clock, "10.0.0.1", b"origin", 0, "started", host="server")
    announce(tracker, clock, "10.1.0.9", b"before", 600, "started", port=6881)
    if how == "silent":
        clock.now += 25
        announce(tracker, clock, "10.0.0.1", b"origin", 0, host="server")
        tracker.expire()
    elif how == "stopped":
        announce(tracker, clock, "10.1.0.9", b"before", 600, "stopped", port=6881)
    elif how == "failed":
        announce(tracker, clock, "10.1.0.9", b"report", 600, "stopped", port=6881, error="fetch failed: disk")
    assert [row[3] for row in rows_of(swarm, clock) if row[0] == "pc-9"] == \
        ["downloading" if how == "active" else how]
    # Powered off and on: the agent comes back with a new peer id on a new port.
    clock.now += 1
    reply = announce(tracker, clock, "10.1.0.9", b"after", 520, "started", port=6999)
    assert rows_of(swarm, clock) == [("server", "10.0.0.1", 6881, "seeding", 0),
                                     ("pc-9", "10.1.0.9", 6999, "downloading", 520)]
    assert swarm.status(clock(), 5000.0)["totals"]["terminals"] == 1
    # Peer lists hand out the new row only.
    to_origin = announce(tracker, clock, "10.0.0.1", b"origin", 0, host="server")
    assert _chunks(to_origin["peers"]) == [ipaddress.ip_address("10.1.0.9").packed + (6999).to_bytes(2, "big")]
    assert reply["incomplete"] == 1


def test_a_stale_complete_row_never_stands_beside_a_new_run_of_the_same_host():
    tracker, clock = make()
    swarm = tracker.swarms[HASH]
    announce(tracker, clock, "10.2.0.3", b"run-1", 0, "completed", host="pc-3", port=7001)
    announce(tracker, clock, "10.2.0.3", b"run-1", 0, "stopped", host="pc-3", port=7001)
    announce(tracker, clock, "10.2.0.3", b"run-2", SIZE, "started", host="pc-3", port=7002)
    assert rows_of(swarm, clock) == [("pc-3", "10.2.0.3", 7002, "downloading", SIZE)]


def test_replacing_is_per_host_and_address_never_across_them():
    tracker, clock = make()
    swarm = tracker.swarms[HASH]
    # Two hosts behind one address (names not in the hosts map) are two hosts.
    announce(tracker, clock, "10.2.0.3", b"a", SIZE, "started", host="pc-3", port=7001)
    announce(tracker, clock, "10.2.0.3", b"b", SIZE, "started", host="pc-4", port=7002)
    # Another address sending pc-9's old peer id and port replaces nothing of pc-9.
    announce(tracker, clock, "10.1.0.9", b"nine", 400, "started")
    announce(tracker, clock, "10.1.0.66", b"nine", 0, "started", host="pc-66")
    assert sorted(rows_of(swarm, clock)) == [
        ("pc-3", "10.2.0.3", 7001, "downloading", SIZE), ("pc-4", "10.2.0.3", 7002, "downloading", SIZE),
        ("pc-66", "10.1.0.66", 6881, "complete", 0), ("pc-9", "10.1.0.9", 6881, "downloading", 400)]


def test_a_failure_report_replaces_the_hosts_older_rows():
    tracker, clock = make()
    swarm = tracker.swarms[HASH]
    announce(tracker, clock, "10.1.0.9", b"old", 600, "started", port=6881)
    announce(tracker, clock, "10.1.0.9", b"old", 600, "stopped", port=6881)
    # The restarted job fails before libtorrent's first announce: a row of its own, the only one.
    announce(tracker, clock, "10.1.0.9", b"report", 600, "stopped", port=6999, error="fetch failed: target")
    assert [(r[2], r[3]) for r in rows_of(swarm, clock)] == [(6999, "failed")]


def test_bridges_show_in_the_status_and_the_debug_log_says_why(caplog):
    cfg = config.parse({
        "allowed_networks": ["10.0.0.0/8"], "interval": 10, "info_hashes": [HASH.hex()],
        "hosts": {"10.2.0.8": "cache-2"},
        "groups": {"room1": {"networks": ["10.1.0.0/24"]},
                   "site2": {"networks": ["10.2.0.0/24"], "seeders": ["cache-2"], "bridges": 1}},
        "policy": {"seeders": ["10.0.0.1"], "bridges": 1}})
    clock = Clock()
    tracker = Tracker(cfg, rng=random.Random(0), clock=clock, wall_clock=lambda: 5000.0)
    caplog.set_level("DEBUG", logger="p2pfleet")
    announce(tracker, clock, "10.0.0.1", b"origin", 0, "started")
    for ip in ("10.1.0.2", "10.1.0.3", "10.2.0.7"):
        announce(tracker, clock, ip, ip.encode(), SIZE, "started")
    # the site's cache host takes the bridge from the terminal that had it
    announce(tracker, clock, "10.2.0.8", b"cache", SIZE, "started", host="cache-2")
    rows = {row["ip"]: row for row in tracker.status(with_peers=True)[0]["peers"]}
    assert [ip for ip, row in sorted(rows.items()) if row["bridge"]] == ["10.1.0.2", "10.2.0.8"]
    assert rows["10.2.0.8"]["site_seeder"] and not rows["10.2.0.7"]["site_seeder"]
    assert "group site2 bridges now: cache-2:6881" in caplog.text
    assert "gets 3 peers as bridge: origin=1, other groups=1, own group=1" in caplog.text


def test_a_fetch_in_its_local_phase_is_shown_but_handed_to_nobody_until_its_torrent_announces():
    from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.failure_report import PEER_ID_PREFIX
    tracker, clock = make()
    announce(tracker, clock, "10.0.0.1", b"origin", 0, "started")
    # the agent's own report while it reads its disks: no torrent listens yet
    announce(tracker, clock, "10.1.0.2", PEER_ID_PREFIX + b"abc", SIZE, "started")
    other = announce(tracker, clock, "10.1.0.3", b"b", SIZE, "started")
    reading = ipaddress.ip_address("10.1.0.2").packed + (6881).to_bytes(2, "big")
    assert reading not in _chunks(other["peers"])
    status = tracker.status(with_peers=True)[0]
    assert status["totals"]["downloading"] == 2                  # the fleet wait sees it alive
    # its torrent's first announce (libtorrent's peer id) replaces the row: now it is handed out
    announce(tracker, clock, "10.1.0.2", b"-LT2010-xyz", SIZE, "started")
    assert reading in _chunks(announce(tracker, clock, "10.1.0.3", b"b", SIZE)["peers"])


def test_a_local_phase_report_arriving_after_its_torrent_announced_changes_nothing():
    """The agent sends its last report just before its torrent starts; on the wire it may
    arrive after the torrent's first announce. It must not take that row's place (and its
    origin slot): the row would flip between the two, and the slot with it."""
    from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.failure_report import PEER_ID_PREFIX
    tracker, clock = make(bridges=0, origin_fanout=1)
    announce(tracker, clock, "10.0.0.1", b"origin", 0, "started")
    announce(tracker, clock, "10.1.0.2", b"-LT2010-xyz", SIZE, "started", host="pc-2")
    clock.now += 1
    announce(tracker, clock, "10.1.0.2", PEER_ID_PREFIX + b"late", SIZE, "started", host="pc-2")
    swarm = tracker.swarms[HASH]
    (row,) = [p for p in swarm.peers.values() if p.host == "pc-2"]
    assert row.listening and row in swarm.origin_assignments[(ipaddress.ip_address("10.0.0.1"), b"origin".ljust(20, b"."))]
    # An agent restarted on the same port: its old torrent row has gone quiet, its report is news.
    clock.now += 20
    announce(tracker, clock, "10.1.0.2", PEER_ID_PREFIX + b"new", SIZE, "started", host="pc-2")
    (row,) = [p for p in swarm.peers.values() if p.host == "pc-2"]
    assert not row.listening


def test_without_bridges_a_fetch_in_its_local_phase_gets_no_origin_slot():
    from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.failure_report import PEER_ID_PREFIX
    tracker, clock = make(bridges=0, origin_fanout=1)
    announce(tracker, clock, "10.0.0.1", b"origin", 0, "started")
    announce(tracker, clock, "10.1.0.2", PEER_ID_PREFIX + b"abc", SIZE, "started")
    announce(tracker, clock, "10.1.0.3", b"b", SIZE, "started")
    origin = announce(tracker, clock, "10.0.0.1", b"origin", 0)
    assert _chunks(origin["peers"]) == [ipaddress.ip_address("10.1.0.3").packed + (6881).to_bytes(2, "big")]
