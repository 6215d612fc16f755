"""Network addresses as administrators write them: ``HOST:PORT`` endpoints and networks."""
import ipaddress
from urllib.parse import urlsplit

from .errors import P2PFleetError


def parse_endpoint(text, default_host: str = "0.0.0.0", error=P2PFleetError) -> tuple:
    """``HOST:PORT``, ``[V6]:PORT`` or ``PORT`` → ``(host, port)``."""
    host, sep, port = str(text).rpartition(":")
    if not sep:
        host, port = default_host, str(text)
    host = host.strip("[]") or default_host
    try:
        number = int(port)
    except ValueError:
        raise error(f"invalid endpoint {text!r}: expected HOST:PORT") from None
    if not 0 <= number <= 65535:
        raise error(f"invalid endpoint {text!r}: port out of range")
    return host, number


def parse_peer(text, error=P2PFleetError) -> tuple:
    """A peer to dial, ``IP:PORT`` or ``[V6]:PORT``: an address, not a name (libtorrent
    dials addresses only; a name here would be a typo or a DNS dependency in the lab)."""
    host, port = parse_endpoint(text, default_host="127.0.0.1", error=error)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise error(f"peer {text!r}: must be IP:PORT (or [IPv6]:PORT), not a host name") from None
    if port <= 0:
        raise error(f"peer {text!r}: port out of range")
    return host, port


def format_endpoint(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_networks(entries, what: str, error=P2PFleetError) -> list:
    """A list of CIDR networks (a bare address is a /32 or /128)."""
    if isinstance(entries, str) or not isinstance(entries, (list, tuple)):
        raise error(f"{what}: must be a list of networks, got {entries!r}")
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(str(entry), strict=False))
        except ValueError:
            raise error(f"{what}: {entry!r} is not an IP network (e.g. 10.0.0.0/8)") from None
    return networks


def parse_announce_urls(value, what: str = "trackers", error=P2PFleetError) -> list:
    """Tracker announce URLs: a list of ``http://`` or ``https://`` URLs that name a host.

    The one rule for the agent's config and for a job's ``trackers``: libtorrent would also
    take other schemes (``udp://``, ``file://``...), which the LAN tracker does not speak and
    a job handed over the agent's socket must not make it open. Printable ASCII only, since
    the URL goes into an HTTP request line.
    """
    if isinstance(value, list) and all(isinstance(url, str) and _announce_url(url) for url in value):
        return list(value)
    raise error(f"{what}: must be a list of http(s):// announce URLs, got {value!r}")


def _announce_url(url: str) -> bool:
    if not url.isascii() or not url.isprintable() or " " in url:
        return False
    try:
        parts = urlsplit(url)
        port = parts.port           # ValueError for a port that is not a number in 0..65535
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and port != 0
