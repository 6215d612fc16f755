"""The tracker's HTTP face: announce, scrape, fleet status, metrics, the page, admin."""

import asyncio
import hmac
import importlib.resources
import logging
import signal

from aiohttp import web

from ..bencode import encode
from ..errors import ManifestError
from .config import ConfigError
from .announce import AnnounceError, parse_announce, parse_scrape
from .state import Tracker, client_ip, manifest_fields, parse_manifest_json

log = logging.getLogger("p2pfleet.tracker")

TRACKER_KEY = web.AppKey("tracker", Tracker)
_BENCODE = "text/plain"
# Admin bodies are a manifest or an info-hash; a megabyte is generous.
MAX_ADMIN_BODY = 1 << 20


def _page() -> bytes:
    return importlib.resources.files(__package__).joinpath("page.html").read_bytes()


def _failure(message):
    return web.Response(body=encode({"failure reason": message}), content_type=_BENCODE)


def _peer_ip(request, tracker):
    """The announcing peer's IP, or a failure response if it may not use this tracker."""
    try:
        ip = client_ip(request.remote or "")
    except ValueError:
        return None, _failure("cannot determine your IP address")
    if not tracker.config.allows(ip):
        return None, _failure(f"{ip} is not in a network allowed on this tracker")
    return ip, None


async def announce(request):
    tracker = request.app[TRACKER_KEY]
    ip, refusal = _peer_ip(request, tracker)
    if refusal is not None:
        tracker.counters["announce_failed"] += 1
        return refusal
    try:
        req = parse_announce(request.rel_url.raw_query_string, tracker.config.max_numwant)
    except AnnounceError as exc:
        tracker.counters["announce_failed"] += 1
        log.debug("announce from %s refused: %s", ip, exc)
        return _failure(str(exc))
    swarm = tracker.swarms.get(req.info_hash)
    if swarm is None:
        tracker.counters["announce_failed"] += 1
        return _failure(f"info_hash {req.info_hash.hex()} is not registered on this tracker")
    response = swarm.announce(req, ip, tracker.config, tracker.rng, tracker.clock())
    tracker.counters["announce_ok"] += 1
    return web.Response(body=encode(response), content_type=_BENCODE)


async def scrape(request):
    tracker = request.app[TRACKER_KEY]
    _, refusal = _peer_ip(request, tracker)
    if refusal is not None:
        return refusal
    try:
        wanted = parse_scrape(request.rel_url.raw_query_string)
    except AnnounceError as exc:
        return _failure(str(exc))
    tracker.counters["scrape"] += 1
    swarms = tracker.swarms
    files = {h: swarms[h].scrape() for h in (wanted or swarms) if h in swarms}
    return web.Response(body=encode({"files": files}), content_type=_BENCODE)


async def status_all(request):
    tracker = request.app[TRACKER_KEY]
    return web.json_response({"interval": tracker.config.interval,
                              "torrents": tracker.status(with_peers=False)})


async def status_one(request):
    tracker = request.app[TRACKER_KEY]
    try:
        info_hash = bytes.fromhex(request.match_info["info_hash"])
    except ValueError:
        info_hash = None
    swarm = tracker.swarms.get(info_hash) if info_hash and len(info_hash) == 20 else None
    if swarm is None:
        return web.json_response({"error": "unknown info_hash"}, status=404)
    status = swarm.status(tracker.clock(), tracker.wall_clock(), with_peers=True)
    status["interval"] = tracker.config.interval
    return web.json_response(status)


async def metrics(request):
    tracker = request.app[TRACKER_KEY]
    lines = [
        "# HELP p2pfleet_tracker_announces_total Announces answered, by result.",
        "# TYPE p2pfleet_tracker_announces_total counter",
        f'p2pfleet_tracker_announces_total{{result="ok"}} {tracker.counters["announce_ok"]}',
        f'p2pfleet_tracker_announces_total{{result="failed"}} {tracker.counters["announce_failed"]}',
        "# HELP p2pfleet_tracker_scrapes_total Scrapes answered.",
        "# TYPE p2pfleet_tracker_scrapes_total counter",
        f"p2pfleet_tracker_scrapes_total {tracker.counters['scrape']}",
        "# HELP p2pfleet_tracker_swarms Registered info-hashes.",
        "# TYPE p2pfleet_tracker_swarms gauge",
        f"p2pfleet_tracker_swarms {len(tracker.swarms)}",
    ]
    gauges = [
        ("peers", "gauge", "Active peers (origin seeders included).", "peers"),
        ("downloading_peers", "gauge", "Active peers with bytes left.", "downloading"),
        ("complete_peers", "gauge", "Active terminals that have the whole image.", "complete"),
        ("silent_peers", "gauge", "Peers that missed their announces.", "silent"),
        ("bytes_left", "gauge", "Bytes the terminals still have to download.", "bytes_left"),
        ("bytes_total", "gauge", "Image size times the number of terminals.", "bytes_total"),
        ("progress_ratio", "gauge", "Fleet progress, 0 to 1.", "progress"),
        ("upload_bytes_per_second", "gauge", "Sum of peer upload rates.", "upload_rate"),
        ("download_bytes_per_second", "gauge", "Sum of peer download rates.", "download_rate"),
        ("completed_total", "counter", "Completed events received.", "completed_events"),
    ]
    statuses = tracker.status(with_peers=False)
    for name, kind, help_text, key in gauges:
        lines.append(f"# HELP p2pfleet_tracker_{name} {help_text}")
        lines.append(f"# TYPE p2pfleet_tracker_{name} {kind}")
        for status in statuses:
            label = f'info_hash="{status["info_hash"]}",name="{_label_value(status["name"])}"'
            lines.append(f"p2pfleet_tracker_{name}{{{label}}} {status['totals'][key]}")
    return web.Response(text="\n".join(lines) + "\n",
                        content_type="text/plain", charset="utf-8",
                        headers={"X-Content-Type-Options": "nosniff"})


def _label_value(text):
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


async def page(request):
    return web.Response(body=request.app["page"], content_type="text/html", charset="utf-8")


def _admin_refusal(request, tracker):
    """None if the request may use the admin endpoint, else the response refusing it."""
    try:
        ip = client_ip(request.remote or "")
    except ValueError:
        ip = None
    if ip is None or not tracker.config.allows_admin(ip):
        return web.json_response({"error": f"{ip} is not in admin_networks"}, status=403)
    token = tracker.config.admin_token
    # aiohttp hands header bytes that are not UTF-8 over as surrogates: surrogateescape
    # gives back exactly the bytes the client sent, whatever they are.
    supplied = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
    if token is None or not hmac.compare_digest(supplied, f"Bearer {token}".encode()):
        return web.json_response({"error": "missing or wrong bearer token"}, status=401)
    return None


async def admin_register(request):
    tracker = request.app[TRACKER_KEY]
    refusal = _admin_refusal(request, tracker)
    if refusal is not None:
        return refusal
    if request.content_length is not None and request.content_length > MAX_ADMIN_BODY:
        return web.json_response({"error": "body too large"}, status=413)
    try:
        info_hash, name, size = manifest_fields(parse_manifest_json(await request.read()))
    except ManifestError as exc:
        return web.json_response({"error": f"not a manifest or info_hash: {exc}"}, status=400)
    swarm = tracker.register(info_hash, name, size, source="admin")
    return web.json_response({"registered": info_hash.hex(), "name": swarm.name})


async def admin_unregister(request):
    tracker = request.app[TRACKER_KEY]
    refusal = _admin_refusal(request, tracker)
    if refusal is not None:
        return refusal
    try:
        info_hash = bytes.fromhex(request.match_info["info_hash"])
    except ValueError:
        return web.json_response({"error": "info_hash is not hex"}, status=400)
    if not tracker.unregister(info_hash):
        return web.json_response({"error": "unknown info_hash"}, status=404)
    return web.json_response({"unregistered": info_hash.hex()})


async def _housekeeping(app):
    tracker = app[TRACKER_KEY]
    rescan = tracker.config.manifest_rescan
    tick = max(1.0, min(5.0, tracker.config.interval / 2))
    since_rescan = 0.0
    while True:
        await asyncio.sleep(tick)
        tracker.expire()
        since_rescan += tick
        if rescan and since_rescan >= rescan:
            since_rescan = 0.0
            tracker.rescan()


async def _start_housekeeping(app):
    task = asyncio.get_running_loop().create_task(_housekeeping(app))
    yield
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass


def make_app(tracker) -> web.Application:
    app = web.Application(client_max_size=MAX_ADMIN_BODY)
    app[TRACKER_KEY] = tracker
    app["page"] = _page()
    app.router.add_get("/announce", announce)
    app.router.add_get("/scrape", scrape)
    app.router.add_get("/status.json", status_all)
    app.router.add_get("/status/{info_hash}.json", status_one)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/", page)
    app.router.add_post("/admin/torrents", admin_register)
    app.router.add_delete("/admin/torrents/{info_hash}", admin_unregister)
    app.cleanup_ctx.append(_start_housekeeping)
    return app


async def start(tracker, listen=None):
    """Start serving; return the runner and the bound (host, port) pairs."""
    runner = web.AppRunner(make_app(tracker), access_log=None, handle_signals=False)
    await runner.setup()
    for host, port in listen or tracker.config.listen:
        try:
            await web.TCPSite(runner, host, port, reuse_address=True).start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(f"listen: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return runner, [tuple(address[:2]) for address in runner.addresses]


async def serve(config):
    """Run until SIGINT/SIGTERM; SIGHUP rescans the manifest directory."""
    tracker = Tracker(config)
    runner, bound = await start(tracker)
    for host, port in bound:
        log.info("tracker listening on http://%s/announce",
                 f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGHUP, tracker.rescan)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
