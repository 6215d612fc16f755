"""The tracker over real HTTP: protocol, allow-lists, bad input, admin, status, metrics."""
import json
import os
import shutil
import socket
import subprocess
import time

import pytest

from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.bencode import decode
from helpers.tracker import (
    TrackerProcess, announce, compact_peers, free_port, get, wait_until, write_manifest,
)

HASH = bytes.fromhex("11" * 20)
OTHER = bytes.fromhex("22" * 20)
TOKEN = "admin-token-for-tests-0123456789"


def pid(name):
    return name.encode().ljust(20, b"-")


@pytest.fixture
def tracker(tmp_path):
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    write_manifest(manifests, "lab", HASH.hex(), 1000)
    proc = TrackerProcess(tmp_path, {
        "manifest_dir": str(manifests), "admin_token": TOKEN, "manifest_rescan": 0,
        "allowed_networks": ["127.0.0.0/28"],
        "groups": {"room1": {"networks": ["127.0.0.0/29"]}, "room2": {"networks": ["127.0.0.8/29"]}},
        "policy": {"other_group_peers": 1},
    })
    proc.manifests = manifests
    yield proc
    proc.stop()


def test_announce_returns_compact_peers_of_own_group_first(tracker):
    for i, source in enumerate(["127.0.0.2", "127.0.0.3", "127.0.0.9", "127.0.0.10"]):
        announce(tracker.url, HASH, pid(f"p{i}"), 7000 + i, source=source, event="started")
    reply = announce(tracker.url, HASH, pid("p0"), 7000, source="127.0.0.2")
    peers = compact_peers(reply[b"peers"])
    assert ("127.0.0.3", 7001) in peers
    assert len([p for p in peers if p[0] in ("127.0.0.9", "127.0.0.10")]) == 1, peers
    assert ("127.0.0.2", 7000) not in peers
    assert reply[b"interval"] == 2 and reply[b"min interval"] == 1
    assert (reply[b"complete"], reply[b"incomplete"]) == (0, 4)


def test_non_compact_reply_lists_dicts_without_anyone_elses_peer_id(tracker):
    announce(tracker.url, HASH, pid("a"), 7000, source="127.0.0.2")
    for extra in ({}, {"no_peer_id": 0}, {"no_peer_id": 1}):
        reply = announce(tracker.url, HASH, pid("b"), 7001, source="127.0.0.3", compact=0, **extra)
        assert reply[b"peers"] == [{b"ip": b"127.0.0.2", b"port": 7000}]


def test_ipv6_peers_come_back_in_peers6(tmp_path):
    try:
        port = free_port("::1", "127.0.0.1")
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    proc = TrackerProcess(tmp_path, {"listen": [f"[::1]:{port}", f"127.0.0.1:{port}"],
                                     "info_hashes": [HASH.hex()], "allowed_networks": ["::1/128", "127.0.0.0/8"]},
                          port=port)
    try:
        url6 = f"http://[::1]:{port}"
        announce(url6, HASH, pid("v6"), 7100, source="::1")
        reply = announce(proc.url, HASH, pid("v4"), 7101, source="127.0.0.1")
        assert compact_peers(reply[b"peers6"], width=18) == [("::1", 7100)]
        reply = announce(url6, HASH, pid("v6"), 7100, source="::1")
        assert compact_peers(reply[b"peers"]) == [("127.0.0.1", 7101)]
    finally:
        proc.stop()


def test_unregistered_hash_and_foreign_network_get_failure_reasons(tracker):
    reply = announce(tracker.url, OTHER, pid("a"), 7000, source="127.0.0.2")
    assert reply == {b"failure reason": f"info_hash {OTHER.hex()} is not registered on this tracker".encode()}
    reply = announce(tracker.url, HASH, pid("a"), 7000, source="127.0.0.20")
    assert reply == {b"failure reason": b"127.0.0.20 is not in a network allowed on this tracker"}


@pytest.mark.parametrize("query, reason", [
    ("", b"missing info_hash"),
    ("info_hash=abc&peer_id=x", b"info_hash is 3 bytes, expected 20"),
    (f"info_hash={'%11' * 20}&peer_id={'a' * 20}&port=99999&uploaded=0&downloaded=0&left=0",
     b"port 99999 is out of range 1..65535"),
    (f"info_hash={'%11' * 20}&peer_id={'a' * 20}&port=1&uploaded=0&downloaded=0&left=1" + "0" * 30,
     b"is not a non-negative integer"),
    ("pad=" + "x" * 5000, b"more than 4096"),
])
def test_malformed_announces_get_failure_reasons_and_the_tracker_keeps_serving(tracker, query, reason):
    code, body = get(f"{tracker.url}/announce?{query}", source="127.0.0.2")
    assert code == 200
    assert reason in decode(body)[b"failure reason"]
    assert b"peers" in announce(tracker.url, HASH, pid("ok"), 7000, source="127.0.0.2")


def test_garbage_and_oversized_requests_are_closed_and_the_tracker_keeps_serving(tracker):
    for payload in [os.urandom(4096), b"GET /announce?" + b"a" * 100_000 + b" HTTP/1.1\r\n\r\n",
                    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64]:
        with socket.create_connection(("127.0.0.1", tracker.port), timeout=5) as s:
            try:
                s.sendall(payload)
                s.shutdown(socket.SHUT_WR)
                answer = s.recv(65536)
            except (ConnectionResetError, BrokenPipeError):
                answer = b""
        assert answer == b"" or answer.startswith(b"HTTP/1.1 4"), answer[:100]
    assert b"peers" in announce(tracker.url, HASH, pid("ok"), 7000, source="127.0.0.2")
    assert tracker.popen.poll() is None


def test_scrape_counts_seeders_leechers_and_completions(tracker):
    announce(tracker.url, HASH, pid("a"), 7000, source="127.0.0.2", left=500)
    announce(tracker.url, HASH, pid("b"), 7001, source="127.0.0.3", left=0, event="completed")
    code, body = get(f"{tracker.url}/scrape?info_hash={'%11' * 20}&info_hash={'%22' * 20}", source="127.0.0.2")
    assert decode(body) == {b"files": {HASH: {b"complete": 1, b"downloaded": 1, b"incomplete": 1}}}
    code, body = get(f"{tracker.url}/scrape", source="127.0.0.2")
    assert list(decode(body)[b"files"]) == [HASH]
    code, body = get(f"{tracker.url}/scrape?info_hash=short", source="127.0.0.2")
    assert decode(body) == {b"failure reason": b"info_hash is 5 bytes, expected 20"}


def test_admin_endpoint_registers_with_bearer_token_only(tracker):
    body = json.dumps({"info_hash": OTHER.hex(), "name": "new-image", "image_size": 4096})
    assert get(f"{tracker.url}/admin/torrents", method="POST", body=body)[0] == 401
    assert get(f"{tracker.url}/admin/torrents", method="POST", body=body,
               headers={"Authorization": "Bearer wrong"})[0] == 401
    auth = {"Authorization": f"Bearer {TOKEN}"}
    code, answer = get(f"{tracker.url}/admin/torrents", method="POST", body="{not json", headers=auth)
    assert code == 400 and b"not a manifest" in answer
    code, answer = get(f"{tracker.url}/admin/torrents", method="POST", body=body, headers=auth)
    assert code == 200, answer
    assert b"peers" in announce(tracker.url, OTHER, pid("a"), 7000, source="127.0.0.2")
    assert tracker.status(OTHER.hex())["name"] == "new-image"
    assert get(f"{tracker.url}/admin/torrents/{OTHER.hex()}", method="DELETE", headers=auth)[0] == 200
    assert b"failure reason" in announce(tracker.url, OTHER, pid("a"), 7000, source="127.0.0.2")


def test_sighup_rescans_the_manifest_directory(tracker):
    write_manifest(tracker.manifests, "second", OTHER.hex(), 2000)
    os.remove(tracker.manifests / "lab.manifest.json")
    tracker.hup()
    wait_until(lambda: {t["info_hash"] for t in tracker.status()["torrents"]} == {OTHER.hex()}, 10,
               "after SIGHUP only the manifest left in the directory is registered")


def test_status_shows_host_names_progress_rates_and_silent_peers(tracker):
    announce(tracker.url, HASH, pid("a"), 7000, source="127.0.0.2", left=1000, event="started", host="pc-a")
    announce(tracker.url, HASH, pid("b"), 7001, source="127.0.0.3", left=1000, event="started", host="pc-b")
    time.sleep(1.1)   # rates need two announces at least a second apart
    announce(tracker.url, HASH, pid("a"), 7000, source="127.0.0.2", left=250, downloaded=750, uploaded=100,
             host="pc-a")
    status = tracker.status(HASH.hex())
    rows = {row["host"]: row for row in status["peers"]}
    assert rows["pc-a"]["progress"] == 0.75 and rows["pc-a"]["group"] == "room1"
    assert 0 < rows["pc-a"]["download_rate"] <= 750 / 1.1
    assert status["totals"]["bytes_left"] == 1250 and status["totals"]["progress"] == 0.375

    # pc-b stops announcing: after interval x expiry_intervals (2 x 2 s) it is shown silent.
    def b_silent():
        announce(tracker.url, HASH, pid("a"), 7000, source="127.0.0.2", left=250, host="pc-a")
        return {r["host"]: r["state"] for r in tracker.status(HASH.hex())["peers"]}.get("pc-b") == "silent"
    wait_until(b_silent, 15, "pc-b shown silent after missing its announces", interval=0.5)
    reply = announce(tracker.url, HASH, pid("a"), 7000, source="127.0.0.2", left=250, host="pc-a")
    assert reply[b"peers"] == b""


def test_metrics_endpoint_speaks_prometheus_text(tracker):
    announce(tracker.url, HASH, pid("a"), 7000, source="127.0.0.2", left=400)
    announce(tracker.url, OTHER, pid("a"), 7000, source="127.0.0.2")
    code, body = get(f"{tracker.url}/metrics")
    text = body.decode()
    assert code == 200
    assert 'p2pfleet_tracker_announces_total{result="ok"} 1' in text
    assert 'p2pfleet_tracker_announces_total{result="failed"} 1' in text
    assert f'p2pfleet_tracker_bytes_left{{info_hash="{HASH.hex()}",name="lab"}} 400' in text
    assert "# TYPE p2pfleet_tracker_peers gauge" in text
    assert f'p2pfleet_tracker_fleet_bytes{{info_hash="{HASH.hex()}",name="lab"}} 1000' in text


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool comes with Debian's prometheus package (make deps)")
def test_metrics_pass_promtool(tracker):
    # Prometheus' own checker: the exposition format and the naming rules (a counter ends in
    # _total, nothing else does, units spelled out) on every family, with peers in two swarms.
    announce(tracker.url, HASH, pid("a"), 7000, source="127.0.0.2", left=400)
    announce(tracker.url, HASH, pid("b"), 7001, source="127.0.0.9", left=0, event="completed")
    announce(tracker.url, OTHER, pid("a"), 7000, source="127.0.0.2")
    code, body = get(f"{tracker.url}/metrics")
    assert code == 200
    proc = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, timeout=30, check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr).decode()


def test_page_is_served_as_html(tracker):
    code, body = get(tracker.url + "/")
    assert code == 200 and b"<title>p2pfleet tracker" in body and b"status.json" in body
