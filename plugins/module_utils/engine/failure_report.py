"""Announces the agent sends itself, beside libtorrent's: a job that failed, and a fetch that
is still taking pieces from its own disks (its local phase, before libtorrent has the torrent).

A failed job: the fleet page shows which host and why.

The BitTorrent announce has no error field. A failed job sends one extra announce to each of
its HTTP trackers: ``event=stopped`` plus ``p2pfleet_error=<reason>``, an optional parameter
the p2pfleet tracker validates strictly (printable ASCII, at most ``MAX_REASON_CHARS``) and
shows on the peer's row. Other trackers ignore unknown parameters. libtorrent's own
announces carry a per-torrent random peer id, so the tracker matches this one by the peer's
address and port; the report is sent from the address the session listens on (when it
listens on one address), as libtorrent's announces are. Best effort: a tracker that cannot be reached is logged, never raised.
"""

from __future__ import annotations

import http.client
import ipaddress
import logging
import os
import threading
from urllib.parse import quote, quote_from_bytes, urlsplit

log = logging.getLogger("p2pfleet")

# Same cap as the tracker's parser (tracker/announce.py MAX_ERROR_CHARS).
MAX_REASON_CHARS = 200
REPORT_TIMEOUT = 5.0
PEER_ID_PREFIX = b"-PF0100-"


def one_line_reason(message: str) -> str:
    """``message`` as printable ASCII, one line, at most MAX_REASON_CHARS characters."""
    text = "".join(c if " " <= c <= "~" else "?" for c in " ".join(str(message).split()))
    if len(text) > MAX_REASON_CHARS:
        text = text[:MAX_REASON_CHARS - 3] + "..."
    return text or "failed"


def failure_urls(trackers, info_hash_hex: str, port: int, reason: str) -> list[str]:
    """The announce URLs that report ``reason`` for this torrent to each HTTP(S) tracker."""
    return _announce_urls(trackers, info_hash_hex, port, 0, "stopped",
                          "p2pfleet_error=" + quote(one_line_reason(reason), safe=""))


def progress_urls(trackers, info_hash_hex: str, port: int, left: int) -> list[str]:
    """The announce URLs that show a fetch in its local phase, ``left`` bytes still to find."""
    return _announce_urls(trackers, info_hash_hex, port, left, "started")


def _announce_urls(trackers, info_hash_hex, port, left, event, extra="") -> list[str]:
    query = "&".join(part for part in (
        "info_hash=" + quote_from_bytes(bytes.fromhex(info_hash_hex), safe=""),
        "peer_id=" + quote_from_bytes(PEER_ID_PREFIX + os.urandom(6).hex().encode(), safe=""),
        f"port={port}", "uploaded=0", "downloaded=0", f"left={int(left)}", f"event={event}", "compact=1",
        "numwant=0", extra) if part)
    return [f"{url}{'&' if '?' in url else '?'}{query}" for url in trackers
            if url.startswith(("http://", "https://"))]


def _send(url: str, source: str | None) -> None:
    parts = urlsplit(url)
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    try:
        conn = kind(parts.hostname, parts.port, timeout=REPORT_TIMEOUT,
                    source_address=(source, 0) if source else None)
        try:
            conn.request("GET", f"{parts.path or '/'}?{parts.query}", headers={"User-Agent": "p2pfleet"})
            conn.getresponse().read(4096)
        finally:
            conn.close()
    except (OSError, ValueError, http.client.HTTPException) as exc:
        log.warning("could not announce to tracker %s: %s", url.split("?", 1)[0], exc)


def source_address(listen_host: str) -> str | None:
    """The address to send from: the listen address unless it is a wildcard."""
    try:
        ip = ipaddress.ip_address(listen_host)
    except ValueError:
        return None
    return None if ip.is_unspecified else str(ip)


def report_failure(trackers, info_hash_hex: str, port: int, reason: str,
                   listen_host: str = "0.0.0.0") -> list[threading.Thread]:
    """Start one announce per tracker in the background; the caller joins the threads."""
    return _start(failure_urls(trackers, info_hash_hex, port, reason), listen_host)


def report_local_progress(trackers, info_hash_hex: str, port: int, left: int,
                          listen_host: str = "0.0.0.0") -> list[threading.Thread]:
    """Announce a fetch in its local phase (which may read a 256 GB slot for minutes): the
    fleet's wait sees the terminal alive and making progress, not silent."""
    return _start(progress_urls(trackers, info_hash_hex, port, left), listen_host)


def _start(urls, listen_host) -> list[threading.Thread]:
    source = source_address(listen_host)
    threads = []
    for url in urls:
        thread = threading.Thread(target=_send, args=(url, source), name="p2pfleet-failure-report", daemon=True)
        thread.start()
        threads.append(thread)
    return threads
