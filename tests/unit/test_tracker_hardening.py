"""Pieces of the tracker's hardening that need no network: manifest field checks."""
import json

import pytest

from engine.errors import ManifestError
from engine.tracker.state import manifest_fields, parse_manifest_json


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
