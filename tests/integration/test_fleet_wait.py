"""fleet_wait and fleet_status through real ``ansible`` runs against a real tracker process:
bad options are one line naming the option, a forged announce never makes the fleet done, late
and dead terminals are dropped with their reason, a stall names the origin that went away,
a tracker outage is ridden out, and a host announcing again replaces its old row."""
import concurrent.futures
import re
import threading
import time

import pytest

from helpers.modules import collections_path, run_module
from helpers.tracker import TrackerProcess, announce, wait_until, write_manifest

HASH = "44" * 20
SIZE = 1000
PC01, PC02, FORGER = "127.0.0.3", "127.0.0.4", "127.0.0.9"


@pytest.fixture(scope="module")
def collections(tmp_path_factory):
    return collections_path(tmp_path_factory.mktemp("collections"))


@pytest.fixture
def tracker(tmp_path):
    proc = TrackerProcess(tmp_path, {"info_hashes": [HASH], "hosts": {PC01: "pc-01", PC02: "pc-02"}})
    yield proc
    proc.stop()


def pid(name):
    return name.encode().ljust(20, b"-")


GOOD = {"url": "http://127.0.0.1:9", "info_hash": HASH, "terminals": ["pc-01"]}


@pytest.mark.parametrize("bad, words", [
    ({"timeout": "abc"}, "argument 'timeout' is of type str and we were unable to convert to int"),
    ({"stall_timeout": "x"}, "argument 'stall_timeout' is of type str and we were unable to convert to int"),
    ({"interval": -1}, "argument 'interval' must be more than 0 and at most 86400 seconds, got -1.0"),
    ({"report_every": 0}, "argument 'report_every' must be more than 0"),
    ({"timeout": -5}, "argument 'timeout' must be 0 or more seconds, got -5"),
    ({"drop_after": -1}, "argument 'drop_after' must be 0 or more seconds, got -1"),
    ({"tracker_grace": "soon"}, "argument 'tracker_grace' is of type str and we were unable to convert to int"),
    ({"terminals": "pc-077 pc-078"}, "argument 'terminals': 'pc-077 pc-078' is not a host name"),
    ({"terminals": {"pc-077": 1}}, "argument 'terminals' is of type dict and we were unable to convert to list"),
    ({"terminals": []}, "argument 'terminals' must name at least one terminal"),
    ({"info_hash": "abc"}, "argument 'info_hash' must be 40 hex digits, got 'abc'"),
    ({"url": "file:///etc/passwd"}, "argument 'url' must be the tracker's http:// or https:// base URL"),
    ({"colour": "red"}, "fleet_wait) module: colour. Supported parameters include: drop_after, info_hash"),
    ({"url": None}, "missing required arguments: url"),
])
def test_a_bad_option_is_one_line_naming_it(collections, bad, words):
    args = {key: value for key, value in {**GOOD, **bad}.items() if value is not None}
    result = run_module(collections, "fleet_wait", args, timeout=120)
    assert result["failed"], result
    assert words in result["msg"] and "\n" not in result["msg"], result["msg"]
    assert "Traceback" not in result["msg"] and "invalid literal" not in result["msg"]


def test_a_forged_completion_never_makes_the_fleet_done(collections, tracker):
    announce(tracker.url, bytes.fromhex(HASH), pid("pc-01"), 6881, left=0, source=PC01, event="completed",
             host="pc-01")
    announce(tracker.url, bytes.fromhex(HASH), pid("pc-02"), 6881, left=SIZE // 2, source=PC02, event="started",
             host="pc-02")
    forged = announce(tracker.url, bytes.fromhex(HASH), pid("pc-02"), 6881, left=0, source=FORGER,
                      event="completed", host="pc-02")
    assert b"failure reason" in forged
    # A single name as a string is a one-item list, as in every module.
    args = {"url": tracker.url, "info_hash": HASH, "terminals": "pc-01,pc-02"}

    status = run_module(collections, "fleet_status", args)
    assert not status["failed"] and status["done"] is False and status["missing"] == [], status
    waited = run_module(collections, "fleet_wait", {**args, "timeout": 2, "interval": 0.2}, timeout=120)
    assert waited["failed"] and waited["msg"].endswith("(timeout); waiting for pc-02"), waited

    announce(tracker.url, bytes.fromhex(HASH), pid("pc-02"), 6881, left=0, source=PC02, event="completed",
             host="pc-02")
    waited = run_module(collections, "fleet_wait", {**args, "timeout": 30, "interval": 0.2}, timeout=120)
    assert not waited["failed"] and waited["done"] == ["pc-01", "pc-02"] and waited["dropped"] == {}, waited
    assert run_module(collections, "fleet_status", args)["done"] is True


# -- late and dead terminals, outages (issue 19) ------------------------------------------------
# A lab of one origin and four terminals, each announcing from its own loopback address as
# agents do from their own machines. Silent after 2 s without an announce.
SERVER = "127.0.0.2"
LAB = {"server": SERVER, "pc-01": PC01, "pc-02": PC02, "pc-03": "127.0.0.5", "pc-04": "127.0.0.6"}
QUICK = {"interval": 0.3, "report_every": 1}


@pytest.fixture
def lab(tmp_path):
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    write_manifest(str(manifests), "release-2", HASH, SIZE)
    proc = TrackerProcess(tmp_path, {"manifest_dir": str(manifests), "interval": 1, "min_interval": 1, "expiry_intervals": 2,
                                     "hosts": {address: name for name, address in LAB.items()},
                                     "policy": {"seeders": ["server"]}})
    yield proc
    proc.stop()


@pytest.fixture
def ansible_log(tmp_path, monkeypatch):
    """What fleet_wait printed while it waited (Ansible's log has every displayed line)."""
    path = tmp_path / "ansible.log"
    monkeypatch.setenv("ANSIBLE_LOG_PATH", str(path))
    return lambda: path.read_text() if path.exists() else ""


class Agents(threading.Thread):
    """The lab's agents as the tracker sees them: every quarter second each host that
    ``plan(seconds since start)`` names announces what it has left (host -> left). An
    announce that finds no tracker is lost, as an agent's is."""

    def __init__(self, url, plan):
        super().__init__(daemon=True)
        self.url, self.plan = url, plan
        self.stopping = threading.Event()
        self.started_at = time.monotonic()

    def run(self):
        while not self.stopping.is_set():
            for name, left in self.plan(time.monotonic() - self.started_at).items():
                try:
                    announce(self.url, bytes.fromhex(HASH), pid(name), 6881, left=left, source=LAB[name], host=name)
                except OSError:
                    pass
            self.stopping.wait(0.25)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        self.join(10)


def fleet_args(tracker, *terminals, **options):
    return {"url": tracker.url, "info_hash": HASH, "terminals": list(terminals), **QUICK, **options}


def test_a_terminal_silent_at_40_percent_and_one_never_announced_are_dropped_and_the_rest_is_done(
        collections, lab, ansible_log):
    def plan(seconds):
        moving = max(0, SIZE - int(SIZE * seconds / 9))
        return {"server": 0, "pc-01": moving, "pc-02": moving, **({"pc-03": 600} if seconds < 1 else {})}

    with Agents(lab.url, plan):
        result = run_module(collections, "fleet_wait", fleet_args(lab, "pc-01", "pc-02", "pc-03", "pc-04",
                                                                  drop_after=5, stall_timeout=30), timeout=120)
    assert not result["failed"], result
    assert sorted(result["done"]) == ["pc-01", "pc-02"] and result["missing"] == ["pc-04"], result
    assert re.fullmatch(r"silent since 40 % \(\d\d:\d\d:\d\d\)", result["dropped"]["pc-03"]), result["dropped"]
    assert result["dropped"]["pc-04"] == "never announced"
    printed = ansible_log()
    assert "p2pfleet: pc-03 dropped from the wait: silent since 40 %" in printed, printed
    assert "p2pfleet: pc-04 dropped from the wait: never announced" in printed
    assert re.search(r"2/4 terminals done · 2 dropped: pc-0[34] \(", printed), printed


def test_a_stall_of_the_whole_fleet_names_the_origin_that_went_away(collections, lab):
    def plan(seconds):
        return {**({"server": 0} if seconds < 1 else {}), "pc-01": 13, "pc-02": 13, "pc-03": 13}

    with Agents(lab.url, plan):
        result = run_module(collections, "fleet_wait", fleet_args(lab, "pc-01", "pc-02", "pc-03",
                                                                  drop_after=3, stall_timeout=6), timeout=120)
    assert result["failed"] and "\n" not in result["msg"], result
    assert re.fullmatch(r"fleet_wait: no terminal progressed for \d+ s \(stall_timeout 6 s\): the origin server "
                        rf"\({SERVER}\) went silent at \d\d:\d\d:\d\d; 3 terminals waiting at 98.7 %", result["msg"]), \
        result["msg"]
    assert result["dropped"] == {} and result["done"] == []


def test_the_wait_rides_out_a_tracker_stopped_for_20_s(collections, lab, ansible_log):
    def plan(seconds):
        left = max(0, SIZE - int(SIZE * seconds / 30))
        return {"server": 0, "pc-01": left, "pc-02": left}

    with Agents(lab.url, plan), concurrent.futures.ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(run_module, collections, "fleet_wait",
                              fleet_args(lab, "pc-01", "pc-02", drop_after=4, stall_timeout=6, tracker_grace=60),
                              timeout=180)
        wait_until(lambda: "% · 0/2 terminals done" in ansible_log(), 30, "fleet_wait following the lab")
        lab.stop()
        time.sleep(20)
        lab.start()
        result = waiting.result(180)
    assert not result["failed"], result
    assert sorted(result["done"]) == ["pc-01", "pc-02"] and result["dropped"] == {}, result
    printed = ansible_log()
    assert re.search(r"p2pfleet: tracker unreachable since \d\d:\d\d:\d\d: http://", printed), printed
    assert re.search(r"p2pfleet: tracker back after (19|2\d) s", printed), printed


def test_a_host_announcing_again_with_a_new_peer_id_replaces_its_silent_row(collections, lab):
    info_hash = bytes.fromhex(HASH)
    announce(lab.url, info_hash, pid("pc-02 run 1"), 6881, left=600, source=PC02, event="started")
    wait_until(lambda: [r["state"] for r in lab.status(HASH)["peers"]] == ["silent"], 15, "pc-02 silent")
    # Powered on again: its agent announces with a new peer id, on another port.
    announce(lab.url, info_hash, pid("pc-02 run 2"), 6999, left=520, source=PC02, event="started")
    args = {"url": lab.url, "info_hash": HASH, "terminals": ["pc-02"]}
    status = run_module(collections, "fleet_status", args)
    assert [(r["host"], r["port"], r["state"], r["left"]) for r in status["swarm"]["peers"]] == \
        [("pc-02", 6999, "downloading", 520)], status["swarm"]["peers"]
    assert status["done"] is False and status["swarm"]["totals"]["silent"] == 0
    # The re-run's wait reads the new row only: done as soon as it is.
    announce(lab.url, info_hash, pid("pc-02 run 2"), 6999, left=0, source=PC02, event="completed")
    waited = run_module(collections, "fleet_wait", {**args, **QUICK, "stall_timeout": 10}, timeout=120)
    assert not waited["failed"] and waited["done"] == ["pc-02"], waited
