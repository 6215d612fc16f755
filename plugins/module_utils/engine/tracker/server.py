"""The tracker's HTTP face: announce, scrape, fleet status, metrics, the page, admin."""

import asyncio
import hmac
import importlib.resources
import logging
import resource
import signal

from ..bencode import encode
from ..errors import ManifestError
from ..runtime import HttpProcessingError, web
from .aggregate_log import AggregatedLog, describe, one_line
from .announce import AnnounceError, parse_announce, parse_scrape
from .config import ConfigError
from .connections import ConnectionGate, GatedSite, connection_cap, raise_descriptor_limit
from .hostnames import HostRefused
from .state import Tracker, client_ip, manifest_fields, parse_manifest_json

log = logging.getLogger("p2pfleet.tracker")

TRACKER_KEY = web.AppKey("tracker", Tracker)
ERRORS_KEY = web.AppKey("errors", AggregatedLog)
GATE_KEY = web.AppKey("gate", ConnectionGate)
_BENCODE = "text/plain"
# Admin bodies are a manifest or an info-hash; a megabyte is generous.
MAX_ADMIN_BODY = 1 << 20
# A body that trickles in holds a connection the gate cannot close (it is busy).
ADMIN_BODY_SECONDS = 10
# In-flight requests get this long to finish on SIGTERM.
SHUTDOWN_SECONDS = 5


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
    try:
        response = tracker.announce(swarm, req, ip)
    except HostRefused as exc:
        tracker.counters["announce_failed"] += 1
        request.app[ERRORS_KEY].report("announces refused for a host name of another address",
                                       logging.WARNING, f"announce from {ip} refused: {exc}")
        return _failure(str(exc))
    tracker.counters["announce_ok"] += 1
    return web.Response(body=encode(response), content_type=_BENCODE)


async def scrape(request):
    tracker = request.app[TRACKER_KEY]
    _ip, refusal = _peer_ip(request, tracker)
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
    gate = request.app[GATE_KEY]
    for name, kind, help_text, value in [
        ("connections", "gauge", "Open HTTP connections (descriptors accepted and not yet closed).", len(gate)),
        ("connection_limit", "gauge", "Most open connections allowed (below the descriptor limit).", gate.limit),
        ("idle_connections_closed_total", "counter", "Idle connections closed to make room at the limit.",
         gate.closed_idle),
        ("connection_limit_busy_total", "counter", "Times new connections had to wait at the limit, all busy.",
         gate.waited_busy),
    ]:
        lines += [f"# HELP p2pfleet_tracker_{name} {help_text}", f"# TYPE p2pfleet_tracker_{name} {kind}",
                  f"p2pfleet_tracker_{name} {value}"]
    gauges = [
        ("peers", "gauge", "Active peers (origin seeders included).", "peers"),
        ("downloading_peers", "gauge", "Active peers with bytes left.", "downloading"),
        ("complete_peers", "gauge", "Active terminals that have the whole image.", "complete"),
        ("silent_peers", "gauge", "Peers that missed their announces.", "silent"),
        ("failed_peers", "gauge", "Peers whose job reported a failure (p2pfleet_error).", "failed"),
        ("bytes_left", "gauge", "Bytes the terminals still have to download.", "bytes_left"),
        ("fleet_bytes", "gauge", "Bytes the terminals download in all: image size times their number.", "bytes_total"),
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
        async with asyncio.timeout(ADMIN_BODY_SECONDS):
            body = await request.read()
    except TimeoutError:
        return web.json_response({"error": f"body not received within {ADMIN_BODY_SECONDS} s"}, status=408)
    except web.RequestPayloadError as exc:
        return web.json_response({"error": f"body incomplete: {exc}"}, status=400)
    try:
        info_hash, name, size = manifest_fields(parse_manifest_json(body))
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


@web.middleware
async def _guard(request, handler):
    """Tell the gate the connection is busy; turn a bug into one log line and a 500."""
    gate, transport = request.app[GATE_KEY], request.transport
    gate.request_started(transport)
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception as exc:
        request.app[ERRORS_KEY].report(
            f"unexpected {type(exc).__name__}", logging.ERROR,
            f"{request.method} {request.raw_path[:100]} from {request.remote} failed: {describe(exc)}")
        return web.json_response({"error": "internal error; the tracker log names it"}, status=500)
    finally:
        gate.request_finished(transport)


class _ServerLog:
    """Stands in for aiohttp's server logger, which logs a traceback for every malformed
    request (an attacker can send thousands a second): one aggregated line instead."""

    def __init__(self, errors):
        self._errors = errors

    def _log(self, level, message, *args, exc_info=None, **_):
        text = message % args if args else message
        exc = exc_info if isinstance(exc_info, BaseException) else None
        if isinstance(exc, HttpProcessingError):
            self._errors.report("malformed HTTP requests answered 400", logging.WARNING,
                                f"{text}: malformed HTTP answered 400: {type(exc).__name__}: {exc.message}")
        elif exc is not None:
            self._errors.report(f"unexpected {type(exc).__name__}", logging.ERROR,
                                f"{text}: {describe(exc)}")
        else:
            log.log(level, "%s", one_line(text))

    def debug(self, message, *args, **kwargs):
        self._log(logging.DEBUG, message, *args, **kwargs)

    def info(self, message, *args, **kwargs):
        self._log(logging.INFO, message, *args, **kwargs)

    def warning(self, message, *args, **kwargs):
        self._log(logging.WARNING, message, *args, **kwargs)

    def error(self, message, *args, **kwargs):
        self._log(logging.ERROR, message, *args, **kwargs)

    exception = error


def _loop_exception_handler(errors):
    """asyncio's own errors (e.g. accept() out of descriptors), aggregated, no traceback."""
    def handle(loop, context):
        exc = context.get("exception")
        message = context.get("message") or "event loop error"
        if exc is None:
            errors.report("event loop error", logging.ERROR, message)
        else:
            errors.report(f"event loop {type(exc).__name__}", logging.ERROR, f"{message}: {describe(exc)}")
    return handle


async def _housekeeping(app):
    tracker, errors = app[TRACKER_KEY], app[ERRORS_KEY]
    rescan = tracker.config.manifest_rescan
    tick = max(1.0, min(5.0, tracker.config.interval / 2))
    since_rescan = 0.0
    while True:
        await asyncio.sleep(tick)
        # A bug here must not end expiry and rescans for the rest of the tracker's life.
        try:
            tracker.expire()
            since_rescan += tick
            if rescan and since_rescan >= rescan:
                since_rescan = 0.0
                tracker.rescan()
        except Exception as exc:
            errors.report(f"housekeeping {type(exc).__name__}", logging.ERROR,
                          f"housekeeping failed: {describe(exc)}")
        errors.flush()


async def _start_housekeeping(app):
    task = asyncio.get_running_loop().create_task(_housekeeping(app))
    yield
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass


def make_app(tracker, gate, errors) -> web.Application:
    app = web.Application(client_max_size=MAX_ADMIN_BODY, middlewares=[_guard])
    app[TRACKER_KEY] = tracker
    app[GATE_KEY] = gate
    app[ERRORS_KEY] = errors
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


async def start(tracker, max_connections, errors):
    """Start serving; return the runner and the bound (host, port) pairs."""
    gate = ConnectionGate(max_connections, errors)
    # keepalive_timeout runs from the moment a connection opens and again after each
    # response: a connection that does not deliver a complete request within idle_timeout
    # (silent, or sending its headers a byte at a time) is closed.
    runner = web.AppRunner(make_app(tracker, gate, errors), access_log=None, handle_signals=False,
                           keepalive_timeout=tracker.config.idle_timeout, logger=_ServerLog(errors),
                           shutdown_timeout=SHUTDOWN_SECONDS)
    await runner.setup()
    for host, port in tracker.config.listen:
        try:
            await GatedSite(runner, host, port, gate, errors).start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(f"listen: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return runner, [tuple(address[:2]) for address in runner.addresses]


async def serve(config):
    """Run until SIGINT/SIGTERM; SIGHUP rescans the manifest directory."""
    loop = asyncio.get_running_loop()
    errors = AggregatedLog(log)
    loop.set_exception_handler(_loop_exception_handler(errors))
    descriptors, hard = raise_descriptor_limit()
    max_connections = connection_cap(config.max_connections, descriptors)
    if config.max_connections is not None and max_connections < config.max_connections:
        log.warning("max_connections %d lowered to %d: the descriptor limit is %d",
                    config.max_connections, max_connections, descriptors)
    tracker = Tracker(config)
    runner, bound = await start(tracker, max_connections, errors)
    log.info("at most %d connections (descriptor limit %d, hard %s); idle connections closed after %d s",
             max_connections, descriptors, "unlimited" if hard == resource.RLIM_INFINITY else hard,
             config.idle_timeout)
    for host, port in bound:
        log.info("tracker listening on http://%s/announce",
                 f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGHUP, tracker.rescan)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
