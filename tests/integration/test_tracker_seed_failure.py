"""A seeder whose image has one wrong byte: its seed job fails naming the piece, reports the
failure to the tracker (event=stopped with p2pfleet_error), and the tracker's status JSON and
fleet page show that peer failed and why. Bad p2pfleet_error values get a failure reason."""
import html
import json
import re
import shutil
import subprocess
from urllib.parse import quote

import pytest

from helpers import P2PFLEET, random_image, run_cli
from helpers.tracker import LtPeer, TrackerProcess, announce, free_port, get, wait_until
from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.bencode import decode

MIB = 1 << 20
PIECE = 256 * 1024
BAD_PIECE = 5      # not one the seed's start-up spot check samples (0, 4, 8, ...)
HTML_REASON = '<img src=x onerror="document.title=\'pwned\'"><b>bold</b> & piece 9'


@pytest.fixture
def swarm(tmp_path):
    """An image with one wrong byte in piece 5 after its manifest was made, and a tracker."""
    class Swarm:
        pass
    s = Swarm()
    s.tmp = tmp_path
    s.image = random_image(tmp_path / "disk.img", 8 * MIB, seed=12)
    s.manifests = tmp_path / "manifests"
    s.manifests.mkdir()
    run_cli("manifest", s.image, "--out", s.manifests, "--piece-size", "256K", check=True)
    s.manifest = s.manifests / "disk.img.manifest.json"
    s.torrent = s.manifests / "disk.img.torrent"
    s.info_hash = json.loads(s.manifest.read_text())["info_hash"]
    with open(s.image, "r+b") as f:
        f.seek(BAD_PIECE * PIECE + 77)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    s.tracker = TrackerProcess(tmp_path, {"manifest_dir": str(s.manifests), "interval": 1, "min_interval": 1,
                                          "hosts": {"127.0.0.2": "origin"}, "policy": {"seeders": ["origin"]}})
    s.procs, s.peers = [], []
    yield s
    for p in s.peers:
        p.close()
    for proc in s.procs:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)
    s.tracker.stop()


def rows(s):
    return {r["host"] or r["ip"]: r for r in s.tracker.status(s.info_hash)["peers"]}


def seed_until_it_fails(s):
    log = s.tmp / "seed.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(P2PFLEET + ["seed", str(s.manifest), s.image,
                                            "--listen", f"127.0.0.2:{free_port('127.0.0.2')}",
                                            "--tracker", f"{s.tracker.url}/announce?host=origin"],
                                stdout=out, stderr=subprocess.STDOUT)
    s.procs.append(proc)
    wait_until(lambda: rows(s).get("origin", {}).get("state") == "seeding", 20,
               "origin seeder announced to the tracker as seeding")
    # A stock libtorrent client asks for every piece; serving piece 5 fails its hash check.
    s.peers.append(LtPeer("127.0.0.3", s.torrent, s.tmp, f"{s.tracker.url}/announce?host=pc-101"))
    try:
        code = proc.wait(40)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the seeder did not fail within 40 s:\n{log.read_text()[-2000:]}") from None
    assert code == 1, log.read_text()[-2000:]
    assert f"piece {BAD_PIECE} does not match manifest" in log.read_text().strip().splitlines()[-1]
    return log


def test_a_seed_that_fails_on_a_wrong_piece_shows_failed_with_the_piece_on_the_tracker(swarm):
    log = seed_until_it_fails(swarm)
    # The report was sent before the process exited (the session joins it): no waiting on luck.
    origin = rows(swarm)["origin"]
    assert origin["state"] == "failed", (origin, log.read_text()[-2000:])
    assert f"piece {BAD_PIECE} does not match manifest disk.img" in origin["error"], origin
    assert origin["error"].startswith("seed failed: ")
    totals = swarm.tracker.status(swarm.info_hash)["totals"]
    assert totals["failed"] == 1 and totals["origins"] == 0, totals
    assert swarm.tracker.metric(
        f'p2pfleet_tracker_failed_peers{{info_hash="{swarm.info_hash}",name="disk.img"}}') == 1
    # Later announces from others change nothing about it.
    wait_until(lambda: rows(swarm).get("pc-101", {}).get("seen_ago", 99) < 1.5, 10, "pc-101 announcing")
    assert rows(swarm)["origin"]["state"] == "failed"


def bad_report(swarm, raw_error, event="stopped"):
    """A hand-made failure report from 127.0.0.4 with ``raw_error`` placed in the query as is."""
    query = "&".join([f"info_hash={quote(bytes.fromhex(swarm.info_hash), safe='')}",
                      "peer_id=-XX0000-abcdefghijkl", "port=7001", "uploaded=0", "downloaded=0",
                      "left=0", f"event={event}", f"p2pfleet_error={raw_error}"])
    return get(f"{swarm.tracker.url}/announce?{query}&host=evil", source="127.0.0.4")


@pytest.mark.parametrize("raw_error, event, words", [
    ("", "stopped", "p2pfleet_error must be 1..200 printable ASCII"),
    ("line%0Abreak", "stopped", "p2pfleet_error must be 1..200 printable ASCII"),
    ("%1B%5B2J", "stopped", "p2pfleet_error must be"),
    ("%C3%A9", "stopped", "p2pfleet_error must be"),
    ("%FF%FE", "stopped", "p2pfleet_error must be"),
    ("x" * 201, "stopped", "p2pfleet_error must be"),
    ("%7F", "stopped", "p2pfleet_error must be"),
    ("%00", "stopped", "p2pfleet_error must be"),
    ("a&p2pfleet_error=b", "stopped", "p2pfleet_error given 2 times"),
    ("piece%205", "started", "p2pfleet_error is only allowed with event=stopped"),
    ("x" * 5000, "stopped", "more than 4096"),
])
def test_bad_p2pfleet_error_values_get_a_failure_reason_never_a_500(swarm, raw_error, event, words):
    code, body = bad_report(swarm, raw_error, event)
    assert code == 200, (code, body[:300])
    reason = decode(body)[b"failure reason"].decode()
    assert words in reason, reason
    assert "evil" not in rows(swarm) and "127.0.0.4" not in rows(swarm)


def chromium_dom(swarm):
    cmd = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={swarm.tmp / 'chrome'}", "--virtual-time-budget=5000",
           "--dump-dom", swarm.tracker.url + "/"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed (apt install chromium)")
def test_the_page_shows_the_failed_seeder_and_its_reason_as_text(swarm):
    seed_until_it_fails(swarm)
    # A peer sending HTML as its reason: shown as text, never parsed.
    code, body = bad_report(swarm, quote(HTML_REASON, safe=""))
    assert code == 200 and b"failure reason" not in body, body[:300]
    assert rows(swarm)["evil"]["error"] == HTML_REASON

    dom = chromium_dom(swarm)
    assert re.search(r'data-host="origin" data-state="failed"', dom), dom[-3000:]
    cell = re.search(r'<td class="error" data-error="origin">([^<]*)</td>', dom)
    assert cell is not None, dom[-3000:]
    assert f"piece {BAD_PIECE} does not match manifest disk.img" in html.unescape(cell.group(1))
    evil = re.search(r'<td class="error" data-error="evil">(.*?)</td>', dom)
    assert evil is not None and html.unescape(evil.group(1)) == HTML_REASON, dom[-3000:]
    assert "<img" not in dom and "<b>bold" not in dom and "pwned" not in dom.split("<body", 1)[0]
    assert re.search(r"2 failed", dom), "the totals line does not count the failed peers"
