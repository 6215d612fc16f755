"""Parse announce and scrape query strings exactly as they arrive on the wire.

The query is parsed from raw bytes because ``info_hash`` and ``peer_id`` are 20 arbitrary
bytes, percent-encoded; any text decoding step would corrupt them. Every rejection raises
``AnnounceError`` whose message is sent back verbatim as the bencoded ``failure reason``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

# An announce from a real client is a few hundred bytes; anything far larger is abuse.
MAX_QUERY_BYTES = 4096
# A scrape names several info-hashes, each ~60 bytes percent-encoded.
MAX_SCRAPE_QUERY_BYTES = 8000
MAX_SCRAPE_HASHES = 64
# Byte counters are bounded by 2**63 - 1 so they fit libtorrent's and Prometheus' int64.
MAX_BYTES = 2**63 - 1
# "paused" is BEP 21's partial seed; for the swarm it is a regular announce.
EVENTS = ("started", "stopped", "completed", "paused", "")
_HOST_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")
_DIGITS_RE = re.compile(rb"[0-9]{1,20}")
# p2pfleet_error: why a p2pfleet job failed, shown on the fleet page (docs/tracker.md).
ERROR_PARAM = "p2pfleet_error"
MAX_ERROR_CHARS = 200
_ERROR_RE = re.compile(rb"[\x20-\x7e]{1,%d}" % MAX_ERROR_CHARS)


class AnnounceError(ValueError):
    """The query is not a valid announce or scrape; the message names the problem."""


@dataclass(frozen=True)
class Announce:
    info_hash: bytes
    peer_id: bytes
    port: int
    uploaded: int
    downloaded: int
    left: int
    event: str
    numwant: int | None
    compact: bool
    host: str | None
    error: str | None = None


def parse_query(raw, limit=MAX_QUERY_BYTES) -> dict[bytes, list[bytes]]:
    """Split a raw query string into percent-decoded byte keys and values."""
    if isinstance(raw, str):
        try:
            raw = raw.encode("ascii")
        except UnicodeEncodeError:
            raise AnnounceError("query string contains non-ASCII characters") from None
    if len(raw) > limit:
        raise AnnounceError(f"query string is {len(raw)} bytes, more than {limit}")
    params: dict[bytes, list[bytes]] = {}
    for field in raw.split(b"&"):
        if not field:
            continue
        key, _sep, value = field.partition(b"=")
        params.setdefault(_unquote(key), []).append(_unquote(value))
    return params


def _unquote(part: bytes) -> bytes:
    return unquote_to_bytes(part.replace(b"+", b" "))


def parse_announce(raw, max_numwant: int) -> Announce:
    params = parse_query(raw)
    event = _text(params, "event", default="")
    if event not in EVENTS:
        raise AnnounceError(f"event {event[:32]!r} is not one of started, stopped, completed, paused")
    numwant = None
    if b"numwant" in params:
        numwant = min(_number(params, "numwant", 0, 2**31), max_numwant)
    return Announce(
        info_hash=_id(params, "info_hash"),
        peer_id=_id(params, "peer_id"),
        port=_number(params, "port", 1, 65535),
        uploaded=_number(params, "uploaded", 0, MAX_BYTES),
        downloaded=_number(params, "downloaded", 0, MAX_BYTES),
        left=_number(params, "left", 0, MAX_BYTES),
        event=event,
        numwant=numwant,
        compact=_text(params, "compact", default="1") != "0",
        host=_host(params),
        error=_error(params, event),
    )


def parse_scrape(raw) -> list[bytes]:
    """Return the info-hashes a scrape asks for; an empty list means every registered one."""
    params = parse_query(raw, limit=MAX_SCRAPE_QUERY_BYTES)
    hashes = params.get(b"info_hash", [])
    if len(hashes) > MAX_SCRAPE_HASHES:
        raise AnnounceError(f"scrape names {len(hashes)} info_hash values, more than {MAX_SCRAPE_HASHES}")
    for value in hashes:
        if len(value) != 20:
            raise AnnounceError(f"info_hash is {len(value)} bytes, expected 20")
    return list(dict.fromkeys(hashes))


def _single(params, name: str) -> bytes | None:
    values = params.get(name.encode())
    if values is None:
        return None
    if len(values) > 1:
        raise AnnounceError(f"{name} given {len(values)} times")
    return values[0]


def _id(params, name: str) -> bytes:
    value = _single(params, name)
    if value is None:
        raise AnnounceError(f"missing {name}")
    if len(value) != 20:
        raise AnnounceError(f"{name} is {len(value)} bytes, expected 20")
    return value


def _number(params, name: str, low: int, high: int) -> int:
    value = _single(params, name)
    if value is None:
        raise AnnounceError(f"missing {name}")
    if not _DIGITS_RE.fullmatch(value):
        raise AnnounceError(f"{name} {value[:32]!r} is not a non-negative integer")
    number = int(value)
    if not low <= number <= high:
        raise AnnounceError(f"{name} {number} is out of range {low}..{high}")
    return number


def _text(params, name: str, default: str) -> str:
    value = _single(params, name)
    if value is None:
        return default
    try:
        return value.decode("ascii")
    except UnicodeDecodeError:
        raise AnnounceError(f"{name} is not ASCII") from None


def _host(params) -> str | None:
    value = _single(params, "host")
    if value is None:
        return None
    try:
        host = value.decode("ascii")
    except UnicodeDecodeError:
        raise AnnounceError("host is not an ASCII host name") from None
    if not _HOST_RE.fullmatch(host):
        raise AnnounceError(f"host {host[:64]!r} is not a valid host name")
    return host


def _error(params, event: str) -> str | None:
    """The optional ``p2pfleet_error``: only with event=stopped, printable ASCII, capped."""
    value = _single(params, ERROR_PARAM)
    if value is None:
        return None
    if event != "stopped":
        raise AnnounceError(f"{ERROR_PARAM} is only allowed with event=stopped")
    if not _ERROR_RE.fullmatch(value):
        raise AnnounceError(f"{ERROR_PARAM} must be 1..{MAX_ERROR_CHARS} printable ASCII characters")
    return value.decode("ascii")
