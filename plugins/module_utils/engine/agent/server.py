"""The agent's API: JSON over HTTP on a root-only Unix socket.

Modules never move image bytes: they put a job here and read its state back. Only root
may talk to the agent — the socket is created mode 0600 and every connection's peer
credentials are checked as well, so a socket made reachable by mistake still refuses.

    GET    /v1/agent            version, listen address, allowed networks, job count, slot ledger
    GET    /v1/jobs             every job with its progress
    PUT    /v1/jobs             put a job (idempotent): {"action": "fetch"|"seed", ...}
    GET    /v1/jobs/{id}        one job
    POST   /v1/jobs/{id}/stop   stop it (resume data saved, target released)
    DELETE /v1/jobs/{id}        stop it and forget it (record and resume data removed)
    GET    /v1/reimage          this terminal's reimage record and slots (booted, fallback)
    PUT    /v1/reimage          move it: {"step": "distribute"|"verify"|"tried"|"confirmed"|"rolled_back", ...}
"""
import asyncio
import dataclasses
import json
import logging
import os
import signal
import socket
import struct

from .. import boot
from ..errors import ConfigError, JobConflict, P2PFleetError
from ..reimage import Reimage
from ..records import JobStore
from ..metainfo import Manifest
from ..net import parse_announce_urls, parse_peer
from ..runtime import web
from ..session import Session, SessionSettings
from ..version import VERSION
from . import config as agent_config

log = logging.getLogger("p2pfleet.agent")

API = "v1"
MAX_BODY = 64 << 10
_REIMAGE_KEYS = {"step", "manifest", "trackers", "peers", "seed_after", "stall_timeout", "local_pieces", "check_target",
                 "reason"} | set(agent_config.RENAMED)
_PUT_KEYS = {"action", "manifest", "target", "image", "trackers", "peers", "seed_after", "stall_timeout",
             "require_device", "super_seeding", "local_pieces", "check_target"} | set(agent_config.RENAMED)


class BadRequest(P2PFleetError):
    """A request to the agent that names an unknown key or a value of the wrong type."""


class Agent:
    """The agent's state: its config, its session, and the HTTP handlers over both."""

    def __init__(self, config: agent_config.AgentConfig):
        self.config = config
        self.store = JobStore(config.state_dir)
        self.session = Session(SessionSettings(config.listen, config.upload_limit, config.download_limit,
                                               list(config.allowed_networks), config.link_rate), self.store,
                               target_guard=self._refuse_boot_slots)
        self.reimage = Reimage(self.session, lambda: (self.config.slots, self.config.boot))
        try:
            self.session.note_slots_in_use()
        except (P2PFleetError, OSError, ValueError) as exc:  # the ledger never keeps the agent from starting
            log.error("slot ledger: %s", exc)

    def _refuse_boot_slots(self, path: str) -> None:
        """The session's target guard: never write the slot running now or the slot this
        terminal falls back to, whoever puts the job. It reads the config of the moment, so
        a reload that adds the slots protects them; without slots it has nothing to protect."""
        config = self.config
        if config.slots:
            boot.refuse_fallback_target(path, config.slots, config.boot)

    async def _blocking(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    # -- handlers --------------------------------------------------------------------
    async def info(self, _request):
        cfg = self.config
        return _json({
            "version": VERSION, "api": API, "pid": os.getpid(), "listen": cfg.listen,
            "listen_port": self.session.listen_port, "state_dir": cfg.state_dir, "socket": cfg.socket,
            "trackers": list(cfg.trackers), "host_name": cfg.host_name,
            "allowed_networks": [str(n) for n in cfg.allowed_networks] or ["any"],
            "upload_limit": cfg.upload_limit, "download_limit": cfg.download_limit,
            "seed_after_fetch": cfg.seed_after_fetch, "stall_timeout": cfg.stall_timeout,
            "local_pieces": cfg.local_pieces, "check_target": cfg.check_target, "link_rate": cfg.link_rate,
            "jobs": len(self.session.jobs()), "blocked_peers": self.session.blocked_peers(),
            "slots": self.session.slot_ledger(),
            "slot_definitions": [dict(d) for d in cfg.slots], "boot": dict(cfg.boot),
        })

    async def list_jobs(self, _request):
        return _json({"jobs": [s.as_dict() for s in sorted(self.session.jobs(), key=lambda s: s.name)]})

    async def get_job(self, request):
        _job_id(request)
        snap = self.session.job(request.match_info["id"])
        if snap is None:
            return _error(404, f"no job {request.match_info['id']} on this host")
        return _json({"job": snap.as_dict()})

    async def put_job(self, request):
        """Put a job; the agent alone decides whether that changes anything (``changed``)."""
        dry_run = _dry_run(request)
        body = await _body(request, _PUT_KEYS, "PUT /jobs")
        action = body.get("action")
        manifest = Manifest.load(_path(body, "manifest"))
        trackers = self.config.announce_urls(parse_announce_urls(body.get("trackers", []), error=BadRequest))
        peers = [parse_peer(p, error=BadRequest) for p in _list(body, "peers", str)]
        if action == "fetch":
            if "image" in body or "super_seeding" in body:
                raise BadRequest("image, super_seeding: only for action seed")
            options = self._fetch_options(body)
            snap, changed = await self._blocking(
                lambda: self.session.put_fetch(manifest, _path(body, "target"), trackers, peers,
                                               require_device=_bool(body, "require_device", False),
                                               dry_run=dry_run, **options))
        elif action == "seed":
            fetch_only = ("target", "seed_after", "stall_timeout", "require_device", "local_pieces", "check_target")
            if any(key in body for key in fetch_only):
                raise BadRequest(f"{', '.join(fetch_only)}: only for action fetch")
            snap, changed = await self._blocking(
                lambda: self.session.put_seed(manifest, _path(body, "image"), trackers, peers,
                                              _bool(body, "super_seeding", False), dry_run=dry_run))
        else:
            raise BadRequest(f"action: must be fetch or seed, got {action!r}")
        return _json({"changed": changed, "job": snap.as_dict() if snap is not None else None})

    def _fetch_options(self, body) -> dict:
        """A fetch's options from a request, the config's defaults for those not given."""
        stall = body.get("stall_timeout", self.config.stall_timeout)
        if isinstance(stall, bool) or not isinstance(stall, (int, float)) or not 0 <= stall <= 86400:
            raise BadRequest(f"stall_timeout: must be seconds in 0..86400, got {stall!r}")
        check = body.get("check_target", self.config.check_target)
        if check not in agent_config.CHECK_MODES:
            raise BadRequest(f"check_target: must be one of {', '.join(agent_config.CHECK_MODES)}, got {check!r}")
        return {"seed_after": _bool(body, "seed_after", self.config.seed_after_fetch), "stall_timeout": float(stall),
                "local_pieces": _bool(body, "local_pieces", self.config.local_pieces), "check_target": check}

    async def get_reimage(self, _request):
        return _json(await self._blocking(self.reimage.describe))

    async def put_reimage(self, request):
        """Move this terminal's reimage (engine/reimage.py): ``step`` distribute (with the
        release's ``manifest`` and fetch options), verify, tried, confirmed or rolled_back."""
        body = await _body(request, _REIMAGE_KEYS, "PUT /reimage")
        step = body.get("step")
        reason = body.get("reason", "")
        if not isinstance(reason, str) or len(reason) > 1000:
            raise BadRequest("reason: must be a line of text of at most 1000 characters")
        if step == "distribute":
            manifest = Manifest.load(_path(body, "manifest"))
            trackers = self.config.announce_urls(parse_announce_urls(body.get("trackers", []), error=BadRequest))
            peers = [parse_peer(p, error=BadRequest) for p in _list(body, "peers", str)]
            options = dict(self._fetch_options(body), trackers=trackers, peers=peers)
            answer, changed = await self._blocking(lambda: self.reimage.distribute(manifest, **options))
        elif step == "verify":
            if set(body) - {"step"}:
                raise BadRequest("step verify: takes no options (a fetch verified again keeps its own)")
            answer, changed = await self._blocking(self.reimage.verify)
        else:
            if set(body) - {"step", "reason"}:
                raise BadRequest(f"step {step}: takes only a reason")
            answer, changed = await self._blocking(self.reimage.move, step, " ".join(reason.split()))
        return _json(dict(answer, changed=changed))

    async def stop_job(self, request):
        job_id = _job_id(request)
        before = self.session.job(job_id)
        if before is None:
            return _error(404, f"no job {job_id} on this host")
        if _dry_run(request):
            return _json({"changed": not before.final, "job": before.as_dict()})
        snap = await self._blocking(self.session.stop, job_id)
        if snap is None:
            return _error(404, f"job {job_id} was removed meanwhile")
        return _json({"changed": not before.final, "job": snap.as_dict()})

    async def delete_job(self, request):
        job_id = _job_id(request)
        if self.session.job(job_id) is None:
            return _json({"changed": False})
        if _dry_run(request):
            return _json({"changed": True})
        await self._blocking(self.session.forget, job_id)
        return _json({"changed": True})

    # -- life cycle ------------------------------------------------------------------
    def reload(self) -> None:
        """SIGHUP: read the config again; apply what can change while running."""
        try:
            new = agent_config.load(self.config.source)
        except P2PFleetError as exc:
            log.error("config not reloaded: %s", exc)
            return
        for key in agent_config.RESTART_KEYS:
            if getattr(new, key) != getattr(self.config, key):
                log.warning("config: %s changed; it takes effect when the agent restarts", key)
        try:
            self.session.reconfigure(new.upload_limit, new.download_limit, new.allowed_networks, new.link_rate)
        except P2PFleetError as exc:
            log.error("config not applied: %s", exc)
            return
        _set_log_level(new.log_level)
        self.config = dataclasses.replace(new, **{k: getattr(self.config, k) for k in agent_config.RESTART_KEYS})
        log.info("config reloaded from %s", new.source)


@web.middleware
async def _only_root(request, handler):
    sock = request.transport.get_extra_info("socket") if request.transport else None
    uid = None
    if sock is not None and sock.family == socket.AF_UNIX:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
    if uid not in (0, os.geteuid()):
        return _error(403, "only root may talk to the p2pfleet agent")
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except JobConflict as exc:
        return _error(409, str(exc))
    except P2PFleetError as exc:
        return _error(400, str(exc))


def make_app(agent: Agent) -> web.Application:
    app = web.Application(middlewares=[_only_root], client_max_size=MAX_BODY)
    app.router.add_get(f"/{API}/agent", agent.info)
    app.router.add_get(f"/{API}/jobs", agent.list_jobs)
    app.router.add_put(f"/{API}/jobs", agent.put_job)
    app.router.add_get(f"/{API}/jobs/{{id}}", agent.get_job)
    app.router.add_post(f"/{API}/jobs/{{id}}/stop", agent.stop_job)
    app.router.add_delete(f"/{API}/jobs/{{id}}", agent.delete_job)
    app.router.add_get(f"/{API}/reimage", agent.get_reimage)
    app.router.add_put(f"/{API}/reimage", agent.put_reimage)
    return app


def _prepare_socket(path: str) -> None:
    """Make the socket's directory; refuse if another agent answers on the socket."""
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    if os.path.exists(path):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # left by an agent that died
        else:
            raise ConfigError(f"{path}: another agent is already running on this socket")
        finally:
            probe.close()


async def serve(config: agent_config.AgentConfig, ready=None) -> None:
    """Run the agent until SIGINT/SIGTERM; every job's resume data is saved on the way out."""
    _prepare_socket(config.socket)
    agent = Agent(config)
    runner = None
    try:
        resumed = agent.session.resume_recorded()
        for snap in resumed:
            log.info("job %s (%s %s): %s", snap.id[:12], snap.action, snap.name, snap.state)
        runner = web.AppRunner(make_app(agent), access_log=None, handle_signals=False)
        await runner.setup()
        old_umask = os.umask(0o177)  # the socket is born 0600: no window for anyone else
        try:
            await web.UnixSite(runner, config.socket).start()
        finally:
            os.umask(old_umask)
        os.chmod(config.socket, 0o600)
        log.info("agent %s listening for peers on port %d, API on %s, state in %s", VERSION,
                 agent.session.listen_port, config.socket, config.state_dir)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGHUP, agent.reload)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if ready is not None:
            ready()
        await stop.wait()
        log.info("stopping: saving resume data and releasing targets")
    finally:
        if runner is not None:
            await runner.cleanup()
        await asyncio.get_running_loop().run_in_executor(None, agent.session.close)
        try:
            os.unlink(config.socket)
        except OSError:
            pass


def _set_log_level(level: str) -> None:
    logging.getLogger("p2pfleet").setLevel(level.upper())


def _json(data, status=200):
    return web.Response(text=json.dumps(data, sort_keys=True), status=status, content_type="application/json")


def _error(status, message):
    return _json({"error": message}, status)


async def _body(request, known, what) -> dict:
    """The request's JSON object: an unknown key refused, a renamed one under its new name."""
    body = await _json_object(request)
    unknown = sorted(set(body) - known)
    if unknown:
        current = sorted(known - set(agent_config.RENAMED))
        raise BadRequest(f"{unknown[0]}: unknown key (known: {', '.join(current)})")
    return agent_config.renamed_keys(body, BadRequest, f"{what}: ")[0]


async def _json_object(request) -> dict:
    try:
        data = json.loads(await request.read())
    except (ValueError, RecursionError, UnicodeDecodeError):
        raise BadRequest("the request body must be a JSON object") from None
    except web.HTTPRequestEntityTooLarge:
        raise BadRequest(f"the request body is larger than {MAX_BODY} bytes") from None
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    return data


def _dry_run(request) -> bool:
    """``?dry_run=1``: answer what the call would change, and change nothing (check mode)."""
    value = request.query.get("dry_run", "0")
    if value not in ("0", "1"):
        raise BadRequest(f"dry_run: must be 0 or 1, got {value[:20]!r}")
    return value == "1"


def _job_id(request) -> str:
    job_id = request.match_info["id"]
    if len(job_id) != 40 or any(c not in "0123456789abcdef" for c in job_id):
        raise BadRequest(f"job id {job_id[:60]!r}: must be the image's info-hash, 40 hex digits")
    return job_id


def _path(body, key) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not os.path.isabs(value) or "\0" in value:
        raise BadRequest(f"{key}: must be an absolute path on this host, got {value!r}")
    return value


def _list(body, key, kind) -> list:
    value = body.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, kind) for v in value):
        raise BadRequest(f"{key}: must be a list of {kind.__name__}, got {value!r}")
    return value


def _bool(body, key, default) -> bool:
    value = body.get(key, default)
    if not isinstance(value, bool):
        raise BadRequest(f"{key}: must be true or false, got {value!r}")
    return value
