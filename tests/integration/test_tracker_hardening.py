"""The tracker against hostile and careless clients (issue 12): every bad request gets a 4xx
and at most one log line, never a traceback; idle and surplus connections cannot exhaust
its descriptors; the admin endpoint answers only from admin_networks."""
import json
import os
import resource
import socket
import time

import pytest

from helpers.tracker import TrackerProcess, announce, get, wait_until, write_manifest

HASH = bytes.fromhex("11" * 20)
OTHER = bytes.fromhex("22" * 20)
TOKEN = "admin-token-for-tests-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def pid(name):
    return name.encode().ljust(20, b"-")


@pytest.fixture
def tracker(tmp_path):
    proc = TrackerProcess(tmp_path, {"info_hashes": [HASH.hex()], "admin_token": TOKEN,
                                     "admin_networks": ["127.0.0.1/32"], "idle_timeout": 2})
    yield proc
    proc.stop()


def raw_exchange(port, payload, source="127.0.0.1", timeout=10):
    """Send raw bytes, return the status line of the answer (b"" if the tracker just closed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0)) as s:
        try:
            s.sendall(payload)
            answer = b""
            while b"\r\n" not in answer:
                chunk = s.recv(4096)
                if not chunk:
                    break
                answer += chunk
        except (ConnectionResetError, BrokenPipeError):
            pass
        return answer.split(b"\r\n", 1)[0]


def admin_post(port, body, auth, source="127.0.0.1"):
    head = (b"POST /admin/torrents HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
            b"Authorization: " + auth + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n")
    return raw_exchange(port, head + body, source=source)


def assert_quiet_log(tracker, since, most):
    lines = tracker.log_lines()[since:]
    assert not [line for line in lines if "Traceback" in line or line.startswith("  File ")], \
        "traceback in the tracker log:\n" + "\n".join(lines[-40:])
    assert len(lines) <= most, f"{len(lines)} log lines, expected at most {most}:\n" + "\n".join(lines[:40])
    return lines


NESTED = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize("what, source, auth, body, status", [
    ("Authorization not UTF-8", "127.0.0.1", b"Bearer \xff\xfe\x80", b"{}", b"401"),
    ("Authorization non-ASCII UTF-8", "127.0.0.1", "Bearer é✓".encode(), b"{}", b"401"),
    ("Authorization not UTF-8, outside admin_networks", "127.0.0.2", b"Bearer \xff\xfe", b"{}", b"403"),
    ("JSON nested 100,000 deep", "127.0.0.1", b"Bearer " + TOKEN.encode(), NESTED, b"400"),
    ("name with a lone surrogate", "127.0.0.1", b"Bearer " + TOKEN.encode(),
     json.dumps({"info_hash": OTHER.hex(), "name": "disk\udc80"}).encode(), b"400"),
    ("name with a newline", "127.0.0.1", b"Bearer " + TOKEN.encode(),
     json.dumps({"info_hash": OTHER.hex(), "name": "disk\nERROR forged"}).encode(), b"400"),
    ("image_size beyond int64", "127.0.0.1", b"Bearer " + TOKEN.encode(),
     json.dumps({"info_hash": OTHER.hex(), "image_size": 10**30}).encode(), b"400"),
    ("integer of 5,000 digits", "127.0.0.1", b"Bearer " + TOKEN.encode(),
     b'{"info_hash": "' + OTHER.hex().encode() + b'", "image_size": ' + b"9" * 5000 + b"}", b"400"),
    ("body not UTF-8", "127.0.0.1", b"Bearer " + TOKEN.encode(), b"\xff\xfe{", b"400"),
])
def test_bad_admin_requests_get_a_4xx_and_no_traceback(tracker, what, source, auth, body, status):
    before = len(tracker.log_lines())
    answer = admin_post(tracker.port, body, auth, source=source)
    assert answer.startswith(b"HTTP/1.1 " + status), f"{what}: {answer!r}"
    # Nothing half-registered breaks the pages afterwards.
    for path in ("/status.json", "/metrics", "/"):
        assert get(tracker.url + path)[0] == 200, f"{path} after {what}"
    assert [t["info_hash"] for t in tracker.status()["torrents"]] == [HASH.hex()]
    assert_quiet_log(tracker, before, most=1)


def test_admin_token_is_refused_from_outside_admin_networks(tracker):
    body = json.dumps({"info_hash": OTHER.hex(), "name": "new-image"})
    code, answer = get(f"{tracker.url}/admin/torrents", method="POST", body=body, headers=AUTH, source="127.0.0.2")
    assert code == 403 and b"127.0.0.2 is not in admin_networks" in answer
    code, _ = get(f"{tracker.url}/admin/torrents/{HASH.hex()}", method="DELETE", headers=AUTH, source="127.0.0.3")
    assert code == 403
    assert [t["info_hash"] for t in tracker.status()["torrents"]] == [HASH.hex()]
    code, answer = get(f"{tracker.url}/admin/torrents", method="POST", body=body, headers=AUTH, source="127.0.0.1")
    assert code == 200, answer


MALFORMED = {
    "header of 100 KB": b"GET /status.json HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
    "10,000 headers": b"GET /status.json HTTP/1.1\r\nHost: t\r\n"
                      + b"".join(b"X-%d: a\r\n" % i for i in range(10_000)) + b"\r\n",
    "request line of 100 KB": b"GET /announce?" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: t\r\n\r\n",
    "bytes that are not a URL": b"GET /status/\xff\xfe.json HTTP/1.1\r\nHost: t\r\n\r\n",
    "broken chunked body": b"POST /admin/torrents HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
}


def test_malformed_http_gets_400_and_one_log_line_not_a_traceback_each(tracker):
    before = len(tracker.log_lines())
    rounds = 10
    for _ in range(rounds):
        for what, payload in MALFORMED.items():
            answer = raw_exchange(tracker.port, payload)
            assert answer.startswith(b"HTTP/1.") and b" 400 " in answer, f"{what}: {answer!r}"
    assert b"peers" in announce(tracker.url, HASH, pid("ok"), 7000)
    # 50 malformed requests: one line at once, the count later (after a minute), and the
    # three debug lines of the announce (new peer, its group's bridges, the decision).
    lines = assert_quiet_log(tracker, before, most=4)
    assert sum("malformed HTTP" in line for line in lines) == 1, lines


def test_silent_and_slow_connections_are_closed_after_idle_timeout(tracker):
    """idle_timeout is 2 s: a connection that never completes a request does not stay."""
    silent = socket.create_connection(("127.0.0.1", tracker.port), timeout=15)
    slow = socket.create_connection(("127.0.0.1", tracker.port), timeout=15)
    try:
        slow.sendall(b"GET /status.json HTTP/1.1\r\n")
        started = time.monotonic()
        for _ in range(60):     # a header byte every 0.25 s, for at most 15 s
            try:
                slow.sendall(b"X")
            except OSError:
                break
            time.sleep(0.25)
        else:
            raise AssertionError("a connection trickling its headers stayed open for 15 s")
        assert time.monotonic() - started < 15
        silent.settimeout(15)
        try:
            assert silent.recv(1) == b"", "a silent connection got data instead of being closed"
        except ConnectionResetError:
            pass
    finally:
        silent.close()
        slow.close()


def _raise_own_descriptor_limit(needed):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return soft, hard
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"this test opens {needed} sockets; the hard descriptor limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    return soft, hard


def test_two_thousand_idle_connections_at_a_1024_descriptor_limit(tmp_path):
    """Like ``ulimit -n 1024``: the idle connections cannot keep announces from being
    answered, nor flood the log."""
    idle_count, announces = 2000, 20
    saved = _raise_own_descriptor_limit(idle_count + 200)
    tracker = TrackerProcess(tmp_path, {"info_hashes": [HASH.hex()], "idle_timeout": 60},
                             nofile=(1024, 1024))
    idle, latencies = [], []
    try:
        before = len(tracker.log_lines())
        for i in range(idle_count):
            try:
                idle.append(socket.create_connection(("127.0.0.1", tracker.port), timeout=10))
            except OSError as exc:
                raise AssertionError(f"connection {i} of {idle_count} not accepted: {exc}") from None
        for i in range(announces):
            started = time.monotonic()
            # get() gives each announce 10 s: a bound on liveness, not a performance claim.
            assert b"peers" in announce(tracker.url, HASH, pid(f"p{i}"), 7000 + i)
            latencies.append(time.monotonic() - started)
        assert tracker.popen.poll() is None
        limit = tracker.metric("p2pfleet_tracker_connection_limit")
        assert limit == 1024 - 64
        assert tracker.metric("p2pfleet_tracker_connections") <= limit
        assert tracker.metric("p2pfleet_tracker_idle_connections_closed_total") >= idle_count - limit
        # Per announce two debug lines; the storm itself: one line.
        lines = assert_quiet_log(tracker, before, most=2 * announces + 3)
        assert not [line for line in lines if "Too many open files" in line], lines
    finally:
        for s in idle:
            s.close()
        tracker.stop()
        resource.setrlimit(resource.RLIMIT_NOFILE, saved)
    latencies.sort()
    print(f"announce latency with {idle_count} idle connections at a 1024-descriptor limit: "
          f"median {latencies[len(latencies) // 2] * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms")


def test_soft_descriptor_limit_is_raised_to_the_hard_limit(tmp_path):
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip(f"needs a hard descriptor limit of at least 2048, have {hard}")
    tracker = TrackerProcess(tmp_path, {"info_hashes": [HASH.hex()]}, nofile=(1024, 2048))
    try:
        with open(f"/proc/{tracker.popen.pid}/limits") as f:
            row = next(line for line in f if line.startswith("Max open files")).split()
        assert row[3:5] == ["2048", "2048"], row
        assert tracker.metric("p2pfleet_tracker_connection_limit") == 2048 - 64
    finally:
        tracker.stop()


def test_unreadable_manifests_are_skipped_with_one_line_each(tmp_path):
    """A FIFO must not hang the tracker, deep JSON must not crash it, a bad name must not
    reach the page; the good manifest next to them is served."""
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    write_manifest(manifests, "good", HASH.hex(), 1000)
    os.mkfifo(manifests / "fifo.manifest.json")
    (manifests / "deep.manifest.json").write_bytes(NESTED)
    (manifests / "name.manifest.json").write_text(json.dumps({"info_hash": OTHER.hex(), "name": "x\udc80"}))
    (manifests / "big.manifest.json").write_bytes(b" " * (2 << 20))
    tracker = TrackerProcess(tmp_path, {"manifest_dir": str(manifests), "manifest_rescan": 0})
    try:
        assert [t["info_hash"] for t in tracker.status()["torrents"]] == [HASH.hex()]
        assert get(tracker.url + "/metrics")[0] == 200
        tracker.hup()
        wait_until(lambda: sum("skipping manifest" in line for line in tracker.log_lines()) >= 8, 10,
                   "the rescan after SIGHUP skipped the four bad manifests again")
        skipped = [line for line in tracker.log_lines() if "skipping manifest" in line]
        assert {line.split("skipping manifest ")[1].split(":")[0].rsplit("/", 1)[1] for line in skipped} == {
            "fifo.manifest.json", "deep.manifest.json", "name.manifest.json", "big.manifest.json"}
        assert_quiet_log(tracker, 0, most=100)
    finally:
        tracker.stop()
