"""Pieces of the tracker's hardening that need no network: the aggregated log, the
connection cap, manifest field checks."""
import json
import logging

import pytest

from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.errors import ManifestError
from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.tracker.aggregate_log import MAX_KINDS, AggregatedLog, one_line
from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.tracker.connections import DescriptorLimitError, connection_cap
from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.tracker.state import manifest_fields, parse_manifest_json


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


@pytest.fixture
def aggregated(caplog):
    caplog.set_level(logging.DEBUG, logger="test.aggregate")
    clock = Clock()
    return AggregatedLog(logging.getLogger("test.aggregate"), window=60, clock=clock), clock, caplog


def test_repeats_are_logged_once_then_counted_once_per_window(aggregated):
    errors, clock, caplog = aggregated
    for i in range(10_000):
        errors.report("bad request", logging.WARNING, f"bad request number {i}")
    errors.flush()
    assert caplog.messages == ["bad request number 0"]
    clock.now += 60
    for _ in range(5):
        errors.report("bad request", logging.WARNING, "again")
    errors.flush()
    assert caplog.messages[1:] == ["bad request: 10004 more in the last 60 s"]
    clock.now += 60
    errors.flush()      # a quiet window: nothing to say, the kind is forgotten
    errors.report("bad request", logging.WARNING, "after a quiet minute")
    assert caplog.messages[2:] == ["after a quiet minute"]


def test_kinds_are_bounded_and_lines_are_one_short_printable_line(aggregated):
    errors, clock, caplog = aggregated
    for i in range(MAX_KINDS + 100):
        errors.report(f"kind {i}", logging.ERROR, "x")
    # MAX_KINDS of their own, then one shared by all the others.
    assert len(caplog.messages) == MAX_KINDS + 1
    errors.report("forged", logging.ERROR, "forged\nERROR line")
    assert len(caplog.messages) == MAX_KINDS + 1
    assert one_line("a\nb\udc80") == "a\\nb\\udc80"
    assert len(one_line("z" * 10_000)) < 400


def test_connection_cap_stays_below_the_descriptor_limit():
    assert connection_cap(None, 1024) == 960
    assert connection_cap(500, 1024) == 500
    assert connection_cap(5000, 1024) == 960
    with pytest.raises(DescriptorLimitError, match=r"descriptor limit \(70\).*LimitNOFILE"):
        connection_cap(None, 70)


@pytest.mark.parametrize("document, message", [
    ({"info_hash": "11" * 20, "name": "x\udc80"}, "name must be printable"),
    ({"info_hash": "11" * 20, "name": "two\nlines"}, "name must be printable"),
    ({"info_hash": "11" * 20, "name": "n" * 256}, "name must be printable text of 1..255"),
    ({"info_hash": "11" * 20, "name": ""}, "name must be printable"),
    ({"info_hash": "11" * 20, "image_size": 2**63}, "image_size must be an integer in 0.."),
    ({"info_hash": "11" * 20, "image_size": float("inf")}, "image_size must be an integer"),
    ({"info_hash": "zz" * 20}, "is not hex"),
    ([], "must be a JSON object"),
])
def test_manifest_fields_refuse_what_would_break_the_log_page_or_metrics(document, message):
    with pytest.raises(ManifestError, match=message):
        manifest_fields(document)


def test_manifest_json_nested_too_deep_or_not_json_is_one_clear_error():
    with pytest.raises(ManifestError, match="nested too deeply"):
        parse_manifest_json(b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(ManifestError, match="not JSON"):
        parse_manifest_json(b'{"image_size": ' + b"9" * 5000 + b"}")
    with pytest.raises(ManifestError, match="not JSON"):
        parse_manifest_json(b"\xff\xfe{")
    assert parse_manifest_json(json.dumps({"info_hash": "11" * 20}).encode()) == {"info_hash": "11" * 20}


def test_shipped_systemd_unit_sets_a_descriptor_limit_with_room_for_connections():
    import configparser
    import os
    unit_path = os.path.join(os.path.dirname(__file__), "..", "..", "plugins", "module_utils", "engine",
                             "tracker", "p2pfleet-tracker.service")
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read(unit_path)
    limit = int(unit["Service"]["LimitNOFILE"])
    assert connection_cap(None, limit) >= 10_000
    assert " tracker --config " in unit["Service"]["ExecStart"]
