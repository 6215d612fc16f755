"""fleet_wait and fleet_status through real ``ansible`` runs against a real tracker process:
bad options are one line naming the option, and a forged announce never makes the fleet done."""
import pytest

from module_helpers import collections_path, run_module
from tracker_helpers import TrackerProcess, announce

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
