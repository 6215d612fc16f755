import re
from urllib.parse import quote_from_bytes

import pytest
from hypothesis import given, settings, strategies as st

from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.failure_report import MAX_REASON_CHARS, failure_urls, one_line_reason, progress_urls
from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.tracker.announce import (
    MAX_ERROR_CHARS, MAX_QUERY_BYTES, AnnounceError, parse_announce, parse_query, parse_scrape,
)

INFO_HASH = bytes(range(20))
PEER_ID = b"-LT2110-\x00\xff%&=+ abcdefg"[:20].ljust(20, b"z")


def query(**overrides):
    params = {"info_hash": INFO_HASH, "peer_id": PEER_ID, "port": b"6881", "uploaded": b"0",
              "downloaded": b"0", "left": b"1000", "compact": b"1"}
    params.update(overrides)
    return "&".join(f"{k}={quote_from_bytes(v)}" for k, v in params.items() if v is not None)


def test_valid_announce_keeps_raw_bytes_of_ids():
    req = parse_announce(query(event=b"started", numwant=b"30", host=b"pc-101.lab"), 200)
    assert req.info_hash == INFO_HASH
    assert req.peer_id == PEER_ID
    assert (req.port, req.left, req.event, req.numwant, req.host) == (6881, 1000, "started", 30, "pc-101.lab")
    assert req.compact


def test_plus_and_unescaped_bytes_decode_like_clients_send_them():
    raw = query().encode().replace(b"port=6881", b"port=6881&key=a+b")
    assert parse_announce(raw, 200).port == 6881


def test_numwant_is_clamped_to_the_configured_maximum():
    assert parse_announce(query(numwant=b"100000"), 80).numwant == 80
    assert parse_announce(query(), 80).numwant is None


@pytest.mark.parametrize("overrides, message", [
    ({"info_hash": None}, "missing info_hash"),
    ({"info_hash": b"short"}, "info_hash is 5 bytes, expected 20"),
    ({"peer_id": b"x" * 21}, "peer_id is 21 bytes, expected 20"),
    ({"port": b"0"}, "port 0 is out of range 1..65535"),
    ({"port": b"65536"}, "port 65536 is out of range"),
    ({"port": b"-1"}, "port b'-1' is not a non-negative integer"),
    ({"port": None}, "missing port"),
    ({"left": b"99999999999999999999999"}, "left b'99999999999999999999999' is not a non-negative integer"),
    ({"left": b"18446744073709551615"}, "left 18446744073709551615 is out of range"),
    ({"uploaded": b"1e9"}, "uploaded b'1e9' is not a non-negative integer"),
    ({"downloaded": b"12\n"}, "downloaded b'12\\n' is not a non-negative integer"),
    ({"event": b"resumed"}, "event 'resumed' is not one of started, stopped, completed, paused"),
    ({"event": b"\xff"}, "event is not ASCII"),
    ({"host": b"bad host"}, "host 'bad host' is not a valid host name"),
    ({"event": b"stopped", "p2pfleet_error": b""}, "p2pfleet_error must be 1..200 printable ASCII"),
    ({"event": b"stopped", "p2pfleet_error": b"a\nb"}, "p2pfleet_error must be 1..200 printable ASCII"),
    ({"event": b"stopped", "p2pfleet_error": b"\x1b[31m"}, "p2pfleet_error must be 1..200 printable"),
    ({"event": b"stopped", "p2pfleet_error": "pièce".encode()}, "p2pfleet_error must be 1..200 printable"),
    ({"event": b"stopped", "p2pfleet_error": b"x" * 201}, "p2pfleet_error must be 1..200 printable"),
    ({"event": b"started", "p2pfleet_error": b"piece 5"}, "p2pfleet_error is only allowed with event=stopped"),
    ({"p2pfleet_error": b"piece 5"}, "p2pfleet_error is only allowed with event=stopped"),
])
def test_bad_announces_name_the_problem(overrides, message):
    with pytest.raises(AnnounceError, match=re.escape(message)):
        parse_announce(query(**overrides), 200)


def test_p2pfleet_error_is_percent_decoded_printable_ascii_and_optional():
    reason = b"seed failed: piece 5 does not match <b>img</b> & 100% \"sure\""
    req = parse_announce(query(event=b"stopped", p2pfleet_error=reason), 200)
    assert req.error == reason.decode()
    assert parse_announce(query(event=b"stopped", p2pfleet_error=b"x" * MAX_ERROR_CHARS), 200).error == "x" * 200
    assert parse_announce(query(event=b"stopped"), 200).error is None
    with pytest.raises(AnnounceError, match="p2pfleet_error given 2 times"):
        parse_announce(query(event=b"stopped", p2pfleet_error=b"a") + "&p2pfleet_error=b", 200)


def test_the_engines_failure_report_is_an_announce_the_tracker_accepts():
    ugly = "/dev/sdb: piece 5 \u00e9\n\tdoes not match " + "x" * 400
    assert MAX_REASON_CHARS == MAX_ERROR_CHARS
    line = one_line_reason(ugly)
    assert len(line) == MAX_REASON_CHARS and line.isprintable() and line.isascii()
    urls = failure_urls(["http://t:1/announce?host=pc-1", "udp://t:2", "https://u/a"], INFO_HASH.hex(), 6881, ugly)
    assert [u.split("?")[0] for u in urls] == ["http://t:1/announce", "https://u/a"]
    req = parse_announce(urls[0].split("?", 1)[1], 200)
    assert (req.info_hash, req.port, req.event, req.left, req.host) == (INFO_HASH, 6881, "stopped", 0, "pc-1")
    assert req.error == line


def test_the_local_phase_announce_shows_what_is_left_and_asks_for_no_peers():
    # A fetch reading a 256 GB slot for its own pieces announces itself meanwhile, so that the
    # fleet's wait sees it alive and progressing, not silent.
    urls = progress_urls(["http://t:1/announce?host=pc-1"], INFO_HASH.hex(), 6881, 3 << 30)
    req = parse_announce(urls[0].split("?", 1)[1], 200)
    assert (req.info_hash, req.port, req.event, req.left, req.host, req.numwant) == (
        INFO_HASH, 6881, "started", 3 << 30, "pc-1", 0)


def test_repeated_parameter_is_refused():
    with pytest.raises(AnnounceError, match="port given 2 times"):
        parse_announce(query() + "&port=1", 200)


def test_huge_query_is_refused_before_parsing():
    with pytest.raises(AnnounceError, match=f"more than {MAX_QUERY_BYTES}"):
        parse_announce(query() + "&pad=" + "a" * MAX_QUERY_BYTES, 200)


def test_non_ascii_query_is_refused():
    with pytest.raises(AnnounceError, match="non-ASCII"):
        parse_query("info_hash=é")


def test_scrape_lists_distinct_hashes_and_checks_length():
    other = bytes(20)
    raw = "&".join(f"info_hash={quote_from_bytes(h)}" for h in (INFO_HASH, other, INFO_HASH))
    assert parse_scrape(raw) == [INFO_HASH, other]
    assert parse_scrape("") == []
    with pytest.raises(AnnounceError, match="info_hash is 3 bytes"):
        parse_scrape("info_hash=abc")
    with pytest.raises(AnnounceError, match="more than 64"):
        parse_scrape("&".join([f"info_hash={quote_from_bytes(INFO_HASH)}"] * 65))


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_arbitrary_bytes_either_parse_or_raise_announce_error(raw):
    try:
        req = parse_announce(raw, 200)
    except AnnounceError as exc:
        assert str(exc)
    else:
        assert len(req.info_hash) == 20 and len(req.peer_id) == 20 and 1 <= req.port <= 65535


_field_values = st.one_of(st.binary(max_size=40), st.integers(-2**70, 2**70).map(lambda n: str(n).encode()))


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(
    st.sampled_from(["info_hash", "peer_id", "port", "uploaded", "downloaded", "left", "event",
                     "numwant", "compact", "no_peer_id", "host", "key", "ip", "p2pfleet_error"]),
    _field_values))
def test_fuzz_structured_announces_validate_every_field(fields):
    raw = "&".join(f"{k}={quote_from_bytes(v)}" for k, v in fields.items())
    try:
        req = parse_announce(raw, 200)
    except AnnounceError as exc:
        assert str(exc)
        return
    assert req.info_hash == fields["info_hash"] and req.peer_id == fields["peer_id"]
    assert 1 <= req.port <= 65535
    assert all(0 <= n < 2**63 for n in (req.uploaded, req.downloaded, req.left))
    assert req.numwant is None or 0 <= req.numwant <= 200
    assert req.event in ("started", "stopped", "completed", "paused", "")
    if req.error is not None:
        assert req.event == "stopped" and req.error == fields["p2pfleet_error"].decode("ascii")
        assert 1 <= len(req.error) <= MAX_ERROR_CHARS and req.error.isprintable()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=260))
def test_fuzz_p2pfleet_error_values_parse_to_printable_text_or_refuse(value):
    try:
        req = parse_announce(query(event=b"stopped", p2pfleet_error=value), 200)
    except AnnounceError as exc:
        assert "p2pfleet_error" in str(exc) or "non-ASCII" in str(exc)
        return
    assert req.error == value.decode("ascii") and req.error.isprintable() and 1 <= len(req.error) <= 200
