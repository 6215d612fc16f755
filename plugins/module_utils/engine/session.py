"""One host's libtorrent *session*, owned by one loop thread, and the jobs it runs.

The session profile is for a closed LAN: no DHT, LSD, UPnP or NAT-PMP, no uTP (it capped
loopback transfers near 9 MiB/s and costs ~5x the CPU of TCP), peers only from the
tracker or named explicitly, rate limits that apply to LAN peers too (libtorrent exempts
local networks from limits unless told otherwise), and an IP filter that keeps every
address outside the allowed networks from getting a byte.

Disk I/O goes through libtorrent's *posix* backend: the default backends truncate the
file they open for writing, which a block device refuses forever. Each torrent file is
mapped onto its target with ``renamed_files`` (a device path or a loop slice of it).

Threads: the loop thread (``_run``) is the only one that touches libtorrent and moves
jobs (see ``jobs``). Every public method may be called from any thread: it hands a
command to the loop and waits for its answer, or reads the snapshots the loop publishes
after each turn. Asynchronous steps — saving resume data, taking a torrent out — are
matched to their job handle by handle, so one job's alert never completes another's.
"""
import concurrent.futures
import functools
import logging
import operator
import os
import queue
import threading
import time
from dataclasses import dataclass, field

from . import delta
from . import identity as ident
from . import jobs as J
from . import stripes
from . import verify
from .errors import JobConflict, ManifestError, P2PFleetError, StateError, SwarmError, TargetRefused
from .failure_report import REPORT_TIMEOUT, report_failure, report_local_progress
from .files import read_capped, write_atomic
from .image import SliceMap, Target, claim_target, held_path, open_source, overlaps, retire_fd
from .metainfo import Manifest, fingerprint
from .net import format_endpoint, parse_endpoint
from .runtime import libtorrent as lt

log = logging.getLogger("p2pfleet.session")

# Resume data is saved at most this often while pieces arrive, and sooner once enough
# pieces wait to be saved: a kill loses at most about a second of transfer.
RESUME_SAVE_INTERVAL = 1.0
RESUME_SAVE_PIECES = 16
RESUME_SAVE_MIN_INTERVAL = 0.25
UPDATE_INTERVAL = 0.5
PEER_RETRY_INTERVAL = 5.0
# How often a fetch looks whether its target's name still names the device it holds.
NAME_CHECK_INTERVAL = 1.0
# How often a fetch in its local phase (no torrent yet, so no announce of libtorrent's)
# announces itself to its trackers.
LOCAL_ANNOUNCE_INTERVAL = 10.0
ALERT_TIMEOUT = 15.0
# The alerts the loop reads; libtorrent posts no others.
ALERT_CATEGORIES = ("error", "status", "storage", "tracker", "piece_progress", "ip_block")
# A local-pieces worker looks at its cancel flag between pieces and zero-out chunks: it
# stops within seconds. The target is never released while it may still write.
WORKER_STOP_TIMEOUT = 600.0
USER_AGENT = "p2pfleet/0.1.0"


@dataclass
class SessionSettings:
    """What an administrator sets for a host's session (the agent's config, the CLI's flags)."""

    listen: str = "0.0.0.0:6881"
    upload_limit: int = 0
    download_limit: int = 0
    allowed_networks: list = field(default_factory=list)  # ip_network objects; empty = everyone
    # What a terminal's link delivers (bytes/s): the in-place check of a fetch's target goes
    # on only while the disk reads faster (delta.find_local).
    link_rate: int = delta.DEFAULT_LINK_RATE


def lan_settings(settings: SessionSettings) -> dict:
    """libtorrent settings for a LAN swarm (see the module docstring)."""
    host, port = parse_endpoint(settings.listen, error=SwarmError)
    return {
        "listen_interfaces": format_endpoint(host, port),
        "user_agent": USER_AGENT,
        # Peers and trackers are told this port: never drift to another one silently.
        "listen_system_port_fallback": False,
        "max_retry_port_bind": 0,
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "enable_outgoing_utp": False,
        "enable_incoming_utp": False,
        # Labs behind one NAT, and the virtual lab on one machine, share an address.
        "allow_multiple_connections_per_ip": True,
        # libtorrent's floor is 5 minutes, which would override our tracker's interval and
        # make agents look silent to the fleet status; the tracker sets the pace.
        "min_announce_interval": 2,
        # After a failed announce libtorrent waits 5 s + 5 s × failures² × tracker_backoff %.
        # At its default (250 %) agents came back to a tracker stopped for 60 s only 83 s
        # after it was up again, and the fleet wait waited for them, the image long done; an
        # outage within the wait's grace (5 min) could cost 3.4 min more. At 10 % the waits
        # are 5, 7, 9.5, 13 … s: back within 25 s of the end of a one-minute outage, 80 s of a
        # five-minute one. A LAN tracker serves such retries from a hundred terminals easily.
        "tracker_backoff": 10,
        "announce_to_all_trackers": True,
        "announce_to_all_tiers": True,
        # The allowed networks are about peers; the tracker is named by the admin.
        "apply_ip_filter_to_trackers": False,
        # Measured best for LAN swarms of 4-16 peers; more slots spread the origin thin.
        "unchoke_slots_limit": 8,
        # Request pipelining for a LAN (benchmarks/fleet.py, docs/performance.md). By default
        # a fast peer asks for 8 MiB of contiguous pieces at once and keeps 3 s of requests
        # queued: a piece asked of the origin then arrives seconds later, while every other
        # terminal, not knowing, asks the origin for it too (1.5-1.8 copies of the image
        # left the origin). Single pieces, 1 s of requests, at most 1 MiB outstanding per peer.
        "whole_pieces_threshold": 0,
        "request_queue_time": 1,
        "max_out_request_queue": 64,
        "peer_connect_timeout": 5,
        "active_downloads": -1,
        "active_seeds": -1,
        "active_limit": -1,
        "upload_rate_limit": int(settings.upload_limit),
        "download_rate_limit": int(settings.download_limit),
        "alert_mask": functools.reduce(operator.or_, (getattr(lt.alert_category, name) for name in ALERT_CATEGORIES)),
    }


def _ip_filter(networks):
    """Block every address but the allowed networks (all allowed when none are given)."""
    flt = lt.ip_filter()
    if not networks:
        return flt
    flt.add_rule("0.0.0.0", "255.255.255.255", 1)
    flt.add_rule("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 1)
    for net in networks:
        flt.add_rule(str(net.network_address), str(net.broadcast_address), 0)
    return flt


class _FdClaim:
    """A seed's open descriptor on its image, held for the job's life."""

    def __init__(self, fd):
        self.fd = fd

    def release(self):
        if self.fd is not None:
            retire_fd(self.fd)
            self.fd = None


class Session:
    """A libtorrent session for one host and the jobs in it. Every method is thread-safe."""

    def __init__(self, settings: SessionSettings = None, store: J.JobStore = None, target_guard=None):
        """``target_guard(path)``: raises ``TargetRefused`` for a fetch target this host must
        never write (the agent's: the slot the boot environment falls back to); asked before
        a target is claimed, when a job is put and when a recorded job is taken up again."""
        self.settings = settings or SessionSettings()
        self.store = store
        self.target_guard = target_guard
        self.ledger = delta.Ledger(store.root) if store is not None else None
        params = lt.session_params(lan_settings(self.settings))
        params.disk_io_constructor = "posix_disk_io_constructor"
        self._lt = lt.session(params)
        # Local-network peers normally bypass rate limits; a lab admin limiting a job
        # means the LAN, so every address goes to the global (limited) peer class.
        everyone = lt.ip_filter()
        everyone.add_rule("0.0.0.0", "255.255.255.255", 1 << lt.session.global_peer_class_id)
        everyone.add_rule("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 1 << lt.session.global_peer_class_id)
        self._lt.set_peer_class_filter(everyone)
        self._lt.set_ip_filter(_ip_filter(self.settings.allowed_networks))
        self._wait_listening()
        self._jobs = {}
        self._commands = queue.Queue()
        self._cond = threading.Condition()
        self._published = {}
        self._closing = False
        self._crash = None
        self._last_update = 0.0
        self._blocked_logged = set()
        self._reporters = []
        self._blocked_peers = 0
        self._thread = threading.Thread(target=self._run, name="p2pfleet-session", daemon=True)
        self._thread.start()

    def _wait_listening(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for alert in self._lt.pop_alerts():
                if isinstance(alert, lt.listen_failed_alert):
                    raise SwarmError(f"cannot listen on {alert.address}:{alert.port}: {alert.message()}")
                if isinstance(alert, lt.listen_succeeded_alert):
                    return
            self._lt.wait_for_alert(100)
        raise SwarmError(f"libtorrent did not start listening within {timeout:g} s")

    @property
    def listen_port(self) -> int:
        return self._lt.listen_port()

    # -- the public, thread-safe face ------------------------------------------------
    def put_seed(self, manifest, image_path, trackers=(), peers=(), super_seeding=False):
        """Seed an image; ``(snapshot, changed)``. The same seed again changes nothing."""
        return self._call(self._put_seed, manifest, os.path.abspath(image_path), trackers, peers, super_seeding)

    def put_fetch(self, manifest, target, trackers=(), peers=(), seed_after=False, stall_timeout=300.0,
                  require_device=False, local_sources=True, check_target="auto"):
        """Fetch an image into ``target`` (a path, or a ``Target`` already claimed, whose
        claim then belongs to the job); ``(snapshot, changed)``. The same fetch again
        returns the existing job unchanged. ``local_sources``: take the pieces this host
        already holds from its own disks first; ``check_target``: when to read the target
        for pieces already there (``auto``, ``always``, ``never``; see ``delta``)."""
        if check_target not in delta.CHECK_MODES:
            raise SwarmError(f"check_target must be one of {', '.join(delta.CHECK_MODES)}, got {check_target!r}")
        return self._call(self._put_fetch, manifest, target, trackers, peers, seed_after, stall_timeout,
                          require_device, bool(local_sources), check_target)

    def slot_ledger(self) -> list:
        """What this host knows its slots hold (``delta.LedgerEntry.as_dict`` each)."""
        return [entry.as_dict() for entry in self.ledger.entries()] if self.ledger else []

    def note_slots_in_use(self) -> None:
        """Mark ``changed`` every slot of the ledger that is in use now (mounted, the running
        root, swap): a slot booted since its image was verified is never trusted as is."""
        if self.ledger is not None:
            self.ledger.note_in_use()

    def blocked_peers(self) -> int:
        """How many connections from outside the allowed networks were refused so far."""
        with self._cond:
            return self._blocked_peers

    def stop(self, job_id, timeout: float = 60.0) -> J.JobSnapshot:
        """Stop a job (resume data saved, target released); it stays listed as stopped."""
        self._call(self._stop, job_id)
        self.wait_for(lambda jobs: job_id not in jobs or jobs[job_id].final, timeout, f"job {job_id} to stop")
        return self.job(job_id)

    def forget(self, job_id, timeout: float = 60.0) -> None:
        """Stop a job if it runs and forget it: its record and resume data are removed."""
        self.stop(job_id, timeout)
        self._call(self._forget, job_id)

    def resume_recorded(self) -> list:
        """Take up every job recorded in the state directory; running ones carry on."""
        return self._call(self._resume_recorded)

    def reconfigure(self, upload_limit: int, download_limit: int, allowed_networks, link_rate: int = None) -> None:
        """Apply new rate limits, allowed peer networks and link rate to the running session."""
        self._call(self._reconfigure, int(upload_limit), int(download_limit), list(allowed_networks),
                   int(link_rate or self.settings.link_rate))

    def jobs(self) -> list:
        with self._cond:
            self._raise_if_crashed()
            return list(self._published.values())

    def job(self, job_id):
        with self._cond:
            self._raise_if_crashed()
            return self._published.get(job_id)

    @property
    def crashed(self):
        return self._crash

    def _raise_if_crashed(self):
        if self._crash is not None:
            raise SwarmError(f"the session loop stopped: {self._crash}")

    def wait_for(self, predicate, timeout: float, what: str = "the session") -> dict:
        """Block until ``predicate(snapshots by id)`` holds; SwarmError after ``timeout``."""
        with self._cond:
            ok = self._cond.wait_for(lambda: self._crash is not None or predicate(self._published), timeout)
            if self._crash is not None:
                raise SwarmError(f"the session loop stopped: {self._crash}")
            if not ok:
                raise SwarmError(f"timed out after {timeout:g} s waiting for {what}")
            return dict(self._published)

    def wait_change(self, timeout: float) -> None:
        """Sleep until the loop publishes again (or ``timeout``)."""
        with self._cond:
            self._raise_if_crashed()
            self._cond.wait(timeout)

    def close(self, timeout: float = 60.0) -> None:
        """Save every job's resume data and release every target, keeping the records'
        states, so the same jobs resume when a session starts on this state directory."""
        if self._thread.is_alive():
            try:
                self._call(self._begin_close)
            except SwarmError:
                pass
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("the session loop did not finish within %g s", timeout)
        for job in self._jobs.values():
            job.release_claims()
        for thread in self._reporters:
            thread.join(REPORT_TIMEOUT)
        self._lt.pause()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _call(self, fn, *args, timeout: float = 120.0):
        if self._crash is not None:
            raise SwarmError(f"the session loop stopped: {self._crash}")
        future = concurrent.futures.Future()
        self._commands.put((fn, args, future))
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise SwarmError(f"the session did not answer within {timeout:g} s") from None

    # -- the loop ----------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                self._lt.wait_for_alert(100)
                self._run_commands()
                for alert in self._lt.pop_alerts():
                    self._guarded(self._dispatch, alert)
                now = time.monotonic()
                if now - self._last_update >= UPDATE_INTERVAL:
                    self._last_update = now
                    for job in self._jobs.values():
                        if job.status is not None:
                            job.rate_now = job.rates.update(now, job.status.total_payload_download,
                                                            job.status.total_payload_upload)
                    self._lt.post_torrent_updates()
                for job in list(self._jobs.values()):
                    self._guarded(self._step, job, now, job=job)
                self._publish()
                if self._closing and not any(j.handle is not None or j.awaiting for j in self._jobs.values()):
                    return
        except BaseException as exc:  # a bug: every waiter must hear of it, not hang
            log.exception("the session loop crashed")
            self._crash = f"{type(exc).__name__}: {exc}"
            while not self._commands.empty():
                _fn, _args, future = self._commands.get_nowait()
                future.set_exception(SwarmError(f"the session loop stopped: {self._crash}"))
            with self._cond:
                self._cond.notify_all()

    def _run_commands(self) -> None:
        while True:
            try:
                fn, args, future = self._commands.get_nowait()
            except queue.Empty:
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args)
                self._publish()  # whoever waits for the answer reads the job next
                future.set_result(result)
            except P2PFleetError as exc:
                future.set_exception(exc)
            except OSError as exc:
                where = f"{exc.filename}: " if exc.filename else ""
                future.set_exception(SwarmError(f"{where}{exc.strerror or exc}"))
            except (ValueError, TypeError, RuntimeError) as exc:
                # Input no check foresaw (a NUL in a path, an address libtorrent refuses):
                # the caller gets one line, the loop and the other jobs go on.
                log.exception("command %s failed", getattr(fn, "__name__", fn))
                future.set_exception(SwarmError(f"{type(exc).__name__}: {exc}"))

    def _guarded(self, fn, *args, job=None) -> None:
        """Run one step of the loop; a job whose step raises fails alone, with the reason."""
        if job is None and args and isinstance(args[0], lt.alert):
            job = self._job_for_any(args[0])
        try:
            fn(*args)
        except (P2PFleetError, OSError, ValueError, TypeError, RuntimeError) as exc:
            log.exception("job step failed")
            if job is None:
                return
            message = job.named(str(exc) if isinstance(exc, P2PFleetError)
                                else f"{job.path}: {job.action} failed ({type(exc).__name__}: {exc})")
            job.awaiting = None
            job.stopping = None
            job.cancel.set()
            if job.handle is not None:
                try:
                    if job.handle.is_valid():
                        self._lt.remove_torrent(job.handle)
                except RuntimeError:
                    pass
                job.handle = None
            job.status = None
            job.set_state(J.FAILED, message)
            if job.worker is not None and job.worker.is_alive():
                # It writes the target through its own descriptor: the claim is let go only
                # once it has stopped, or the device could be mounted or claimed under it.
                job.stopping = J.FAILED
                job.awaiting = ("worker", time.monotonic() + WORKER_STOP_TIMEOUT, lambda: self._let_go(job))
            else:
                job.release_claims()
            self._record(job)

    def _let_go(self, job) -> None:
        job.stopping = None
        job.release_claims()
        self._record(job)

    def _publish(self) -> None:
        now = time.monotonic()
        snapshots = {job_id: job.snapshot(now) for job_id, job in self._jobs.items()}
        with self._cond:
            self._published = snapshots
            self._cond.notify_all()

    def _record(self, job) -> None:
        if self.store is None:
            return
        try:
            self.store.write_record(job.record())
        except StateError as exc:
            # The job goes on; losing its record only costs an automatic resume.
            log.error("%s", exc)
            job.warning = str(exc)

    # -- alerts ------------------------------------------------------------------------
    def _job_for_any(self, alert):
        handle = getattr(alert, "handle", None)
        try:
            return self._jobs.get(str(handle.info_hashes().v1)) if handle is not None else None
        except RuntimeError:
            return None

    def _job_of(self, alert):
        handle = getattr(alert, "handle", None)
        if handle is None or not handle.is_valid():
            return None
        job = self._jobs.get(str(handle.info_hashes().v1))
        return job if job is not None and job.handle == handle else None

    def _dispatch(self, alert) -> None:
        if isinstance(alert, lt.state_update_alert):
            for st in alert.status:
                job = self._jobs.get(str(st.info_hashes.v1))
                if job is not None and job.handle == st.handle:
                    job.status = st
            return
        if isinstance(alert, lt.torrent_removed_alert):
            job = self._jobs.get(str(alert.info_hashes.v1))
            if job is not None and job.awaiting and job.awaiting[0] == "remove" and alert.handle == job.handle:
                self._resolve(job)
            return
        if isinstance(alert, lt.peer_blocked_alert):
            with self._cond:
                self._blocked_peers += 1
            address = str(alert.ip[0]) if isinstance(alert.ip, tuple) else str(alert.ip)
            if address not in self._blocked_logged and len(self._blocked_logged) < 1000:
                self._blocked_logged.add(address)
                log.warning("refused peer %s: outside the allowed networks", address)
            return
        job = self._job_of(alert)
        if job is None:
            return
        if isinstance(alert, lt.save_resume_data_alert):
            self._write_resume(job, alert.params)
            self._saved(job)
        elif isinstance(alert, lt.save_resume_data_failed_alert):
            log.debug("%s: resume data not saved: %s", job.manifest.name, alert.message())
            self._saved(job)
        elif isinstance(alert, lt.piece_finished_alert):
            job.resume_dirty = True
            job.pieces_since_save += 1
        elif isinstance(alert, lt.hash_failed_alert) and job.action == "seed":
            self._fail(job, f"{job.path}: piece {alert.piece_index} does not match manifest {job.manifest.name}; "
                            "the image changed after its manifest was made",
                       reason=f"piece {alert.piece_index} does not match manifest {job.manifest.name}; "
                              "the image changed after its manifest was made")
        elif isinstance(alert, (lt.file_error_alert, lt.torrent_error_alert)):
            self._fail(job, job.named(f"{job.action} {job.manifest.name}: {alert.message()}"))
        elif isinstance(alert, lt.torrent_finished_alert):
            if job.action == "fetch" and job.state in (J.DOWNLOADING, J.STALLED):
                self._flush(job)
        elif isinstance(alert, lt.tracker_error_alert):
            job.tracker_error = alert.message()
        elif isinstance(alert, lt.tracker_reply_alert):
            job.tracker_error = ""
            if job.action == "fetch":
                self._follow_stripe(job)

    @staticmethod
    def _follow_stripe(job) -> None:
        """Ask the origin for this fetch's stripe first, as its tracker said (stripes.py)."""
        said, priorities = stripes.follow(job.handle.trackers(), job.stripe, job.manifest.piece_count)
        if priorities is not None:
            job.handle.prioritize_pieces(priorities)
            log.info("%s: origin stripe %s", job.manifest.name, said[len(stripes.PREFIX):])
        job.stripe = said

    def _write_resume(self, job, params) -> None:
        if self.store is None or job.action != "fetch":
            return
        try:
            write_atomic(self.store.resume_path(job.id), lt.write_resume_data_buf(params), mode=0o600,
                         error=StateError)
        except StateError as exc:
            log.error("%s", exc)
            job.warning = f"resume data not saved: {exc}"
            return
        self._record(job)  # its payload counters, as of this save

    # -- asynchronous steps, matched to their job ------------------------------------
    def _save(self, job, flush=False, then=None) -> None:
        """Ask for the job's resume data; ``then()`` once every save in flight is answered."""
        if job.handle is None or not job.handle.is_valid() or (job.awaiting and job.awaiting[0] == "remove"):
            if then:
                then()
            return
        job.handle.save_resume_data(lt.torrent_handle.flush_disk_cache if flush else 0)
        job.saves_in_flight += 1
        job.resume_dirty = False
        job.pieces_since_save = 0
        job.last_resume_save = time.monotonic()
        if then:
            job.awaiting = ("save", time.monotonic() + ALERT_TIMEOUT, then)

    def _saved(self, job) -> None:
        job.saves_in_flight = max(0, job.saves_in_flight - 1)
        if job.saves_in_flight == 0 and job.awaiting and job.awaiting[0] == "save":
            self._resolve(job)

    def _remove(self, job, then) -> None:
        """Take the job's torrent out of the session; ``then()`` once libtorrent says so."""
        if job.awaiting and job.awaiting[0] == "remove":
            # Already on its way out (a repair round): finish with the new continuation.
            job.awaiting = ("remove", job.awaiting[1], then)
            return
        if job.handle is None or not job.handle.is_valid():
            job.status = None
            then()
            return
        try:
            st = job.handle.status()
            job.last_done = st.total_wanted_done
            job.downloaded_before += st.total_payload_download
            job.uploaded_before += st.total_payload_upload
        except RuntimeError:
            pass
        self._lt.remove_torrent(job.handle)
        job.status = None
        job.awaiting = ("remove", time.monotonic() + ALERT_TIMEOUT, then)

    def _resolve(self, job) -> None:
        _kind, _deadline, then = job.awaiting
        job.awaiting = None
        then()

    def _unload(self, job, final=None, error="") -> None:
        """Save resume data, take the torrent out, release the target; then the job is in
        ``final`` (or keeps its state, when the session closes and the job must resume)."""
        job.cancel.set()
        if job.stopping is not None:
            return
        job.stopping = final or job.state

        def done():
            job.handle = None
            job.status = None
            job.release_claims()
            job.stopping = None
            if job.state == J.LOCAL:
                job.worker_result = None  # a result that came too late joins no swarm
            if final:
                job.set_state(final, error)
            self._record(job)

        if job.state == J.LOCAL and job.worker is not None and job.worker.is_alive():
            # It writes into the target: the claim is released once it has stopped.
            job.awaiting = ("worker", time.monotonic() + WORKER_STOP_TIMEOUT, done)
        elif job.handle is None:
            done()
        elif job.action == "fetch" and job.resume_path:
            self._save(job, flush=True, then=lambda: self._remove(job, done))
        else:
            self._remove(job, done)

    def _fail(self, job, message, reason=None) -> None:
        """``reason``: a short form of ``message`` for the trackers (default ``message``)."""
        log.error("%s", message)
        if job.state in J.FINAL:
            return
        job.error = message
        if job.action == "seed" and job.trackers and job.stopping is None:
            # Before libtorrent's own event=stopped: the tracker marks this peer failed, with why.
            # Once per job: more hash failures can arrive while the torrent is being removed.
            self._reporters = [t for t in self._reporters if t.is_alive()]
            self._reporters += report_failure(job.trackers, job.manifest.info_hash, self._lt.listen_port(),
                                              f"seed failed: {reason or message}",
                                              parse_endpoint(self.settings.listen, error=SwarmError)[0])
        self._unload(job, J.FAILED, message)

    # -- the state machine ---------------------------------------------------------------
    def _step(self, job, now) -> None:
        if job.awaiting:
            kind, deadline, _then = job.awaiting
            if kind == "worker" and not job.worker.is_alive():
                self._resolve(job)
            elif kind == "worker" and now > deadline:
                # Never let the target go while the worker may still write it.
                log.warning("%s: the local-pieces worker has not stopped for %g s; the target stays claimed",
                            job.manifest.name, now - deadline + WORKER_STOP_TIMEOUT)
                job.awaiting = (kind, now + WORKER_STOP_TIMEOUT, _then)
            elif now > deadline:
                log.warning("%s: no answer from libtorrent to %s within %g s; going on", job.manifest.name, kind,
                            ALERT_TIMEOUT)
                self._resolve(job)
            return
        # Whether the worker ran is read before its result: a worker that ended had set it.
        worker_ended = job.worker is not None and not job.worker.is_alive()
        if job.state == J.LOCAL and job.stopping is None:
            if job.trackers and now - job.last_local_announce >= LOCAL_ANNOUNCE_INTERVAL:
                job.last_local_announce = now
                left = job.manifest.image_size - (job.local.local_bytes if job.local is not None else 0)
                self._reporters = [t for t in self._reporters if t.is_alive()]
                self._reporters += report_local_progress(job.trackers, job.id, self._lt.listen_port(), left,
                                                         parse_endpoint(self.settings.listen, error=SwarmError)[0])
            if job.worker_result is not None:
                self._local_done(job, job.worker_result)
            elif worker_ended:
                self._fail(job, f"{job.path}: the search for local pieces ended without a result")
            return
        if job.handle is None or job.stopping is not None:
            return
        if job.action == "fetch" and now - job.last_name_check >= NAME_CHECK_INTERVAL:
            job.last_name_check = now
            renamed = self._renamed(job)
            if renamed:
                self._fail(job, renamed)
                return
        if job.resume_dirty and job.resume_path:
            since = now - job.last_resume_save
            if since >= RESUME_SAVE_INTERVAL or (job.pieces_since_save >= RESUME_SAVE_PIECES and since >= RESUME_SAVE_MIN_INTERVAL):
                self._save(job)
        st = job.status
        if job.peers and now - job.last_peer_retry >= PEER_RETRY_INTERVAL:
            if st is None or st.num_peers < len(job.peers):
                self._connect_peers(job)
            job.last_peer_retry = now
        if job.action == "seed":
            if job.state == J.CHECKING and st is not None and st.is_seeding:
                job.set_state(J.SEEDING)
                self._record(job)
            return
        if job.state in (J.DOWNLOADING, J.STALLED) and st is not None:
            if st.total_wanted_done != job.last_progress[0]:
                job.last_progress = (st.total_wanted_done, now)
                if job.state == J.STALLED:
                    job.set_state(J.DOWNLOADING)
                    self._record(job)
            elif job.state == J.DOWNLOADING and job.stall_timeout and now - job.last_progress[1] > job.stall_timeout:
                why = f" (tracker: {job.tracker_error})" if job.tracker_error else ""
                log.warning("%s: no progress for %g s with %d peers%s", job.manifest.name, job.stall_timeout,
                            st.num_peers, why)
                job.set_state(J.STALLED)
                self._record(job)
            if st.total_wanted and st.total_wanted_done >= st.total_wanted:
                self._flush(job)
        elif job.state == J.VERIFYING and job.worker_result is not None:
            self._verified(job, job.worker_result)
        elif job.state == J.VERIFYING and worker_ended:
            self._fail(job, f"{job.path}: the verify pass ended without a result")

    @staticmethod
    def _renamed(job, strict=False) -> str:
        """Why the fetch's target name stopped naming the device it holds, or ``""``."""
        for claim in job.claims:
            if isinstance(claim, Target):
                return claim.renamed(strict)
        return ""

    def _flush(self, job) -> None:
        if job.stopping is not None or job.awaiting or job.state not in (J.DOWNLOADING, J.STALLED):
            return  # being stopped, or already on its way: the stop's own save comes first
        # The published status may be older than the last pieces (a short delta fetch ends
        # between two updates): the counters of a finished download are read now.
        job.status = job.handle.status()
        job.set_state(J.FLUSHING)
        self._record(job)

        def flushed():
            job.set_state(J.VERIFYING)
            self._record(job)
            # The slot's fingerprint for its ledger entry is read there too: not on the loop.
            io_path = job.io_path
            job.start_verify(verify, then=(lambda: delta.slot_fingerprint(io_path)) if self.ledger else None)

        self._save(job, flush=True, then=flushed)

    def _verified(self, job, result) -> None:
        job.worker_result = None
        outcome = result[0]
        if outcome == "verified":
            renamed = self._renamed(job, strict=True)
            if renamed:
                self._fail(job, renamed)
                return
            job.digest = result[1]
            job.bad_pieces = 0
            if self.ledger is not None and job.identity:
                try:
                    self.ledger.record(job.path, job.identity, job.manifest, result[2] or {})
                except StateError as exc:
                    log.error("%s", exc)
                    job.warning = f"slot ledger not written: {exc}"
            if job.seed_after:
                job.set_state(J.SEEDING)
                self._record(job)
            else:
                self._unload(job, J.VERIFIED)
        elif outcome == "wrong":
            bad, why = result[1], result[2]
            if not bad:
                self._fail(job, f"{why}, yet every piece matches its SHA-1: the manifest's digest is wrong")
            elif job.repair_round >= J.MAX_REPAIR_ROUNDS:
                self._fail(job, f"{job.path}: still {len(bad)} wrong pieces after {J.MAX_REPAIR_ROUNDS} repair rounds")
            else:
                job.repair_round += 1
                job.bad_pieces = len(bad)
                log.warning("%s; %d pieces are wrong on %s, fetching them again (round %d)", why, len(bad),
                            job.path, job.repair_round)
                job.set_state(J.REPAIRING)
                self._record(job)
                self._refetch(job, bad)
        elif outcome == "error":
            self._fail(job, result[1])

    def _refetch(self, job, bad) -> None:
        """Mark pieces found wrong on the target as missing so the swarm sends them again."""
        have = [True] * job.manifest.piece_count
        for index in bad:
            have[index] = False

        def removed():
            # libtorrent has no call to forget a piece it believes it has; adding the
            # torrent again with a corrected bitfield is the supported way.
            atp = self._params(job)
            atp.have_pieces = have
            atp.flags |= lt.torrent_flags.no_verify_files
            self._add(job, atp)
            job.set_state(J.DOWNLOADING)
            self._record(job)
            self._save(job)

        self._remove(job, removed)

    # -- putting jobs ------------------------------------------------------------------
    @staticmethod
    def _torrent_info(manifest):
        return torrent_info(manifest)

    def _params(self, job):
        atp = lt.add_torrent_params()
        atp.ti = self._torrent_info(job.manifest)
        atp.save_path = "/"
        atp.renamed_files = dict(enumerate(job.paths))
        atp.trackers = list(job.trackers)
        atp.flags = atp.flags & ~lt.torrent_flags.auto_managed & ~lt.torrent_flags.paused
        return atp

    def _add(self, job, atp) -> None:
        # Every torrent starts without a stripe; its tracker's reply hands one (stripes.py).
        atp.piece_priorities = []
        job.stripe = None
        try:
            job.handle = self._lt.add_torrent(atp)
        except RuntimeError as exc:
            raise SwarmError(f"libtorrent cannot add {job.manifest.name}: {exc}") from None
        job.status = None
        job.saves_in_flight = 0
        job.rates.reset()
        job.last_progress = (-1, time.monotonic())
        try:
            self._connect_peers(job)
        except (RuntimeError, TypeError) as exc:
            self._lt.remove_torrent(job.handle)
            job.handle = None
            raise SwarmError(f"cannot connect to the peers of {job.manifest.name}: {exc}") from None
        self._lt.post_torrent_updates()  # the new job's first status now, not a tick later

    def _connect_peers(self, job) -> None:
        for host, port in job.peers:
            job.handle.connect_peer((host, port))
        job.last_peer_retry = time.monotonic()

    def _existing(self, manifest, action, path):
        """The job this put names again, or None; a clash is refused."""
        job = self._jobs.get(manifest.info_hash)
        if job is None:
            return None
        if job.stopping is not None:
            raise JobConflict(f"the {job.action} job of {manifest.name} is being stopped; put it again in a moment")
        if job.action != action or os.path.abspath(job.path) != path:
            raise JobConflict(
                f"image {manifest.name} ({manifest.info_hash[:12]}) already has a {job.action} job on this host, "
                f"on {job.path}; remove it first")
        return job

    def _refuse_overlap(self, manifest, path, action) -> None:
        for job in self._jobs.values():
            if job.id == manifest.info_hash or job.state in J.FINAL:
                continue
            if action == "seed" and job.action == "seed":
                continue  # two seeds may read one device
            if overlaps(path, job.path):
                what = "image seeded" if job.action == "seed" else "target written"
                raise JobConflict(f"{path}: overlaps {job.path}, the {what} by the {job.action} job of "
                                  f"{job.manifest.name}; one host's jobs never share a target")

    def _put_seed(self, manifest, path, trackers, peers, super_seeding):
        job = self._existing(manifest, "seed", path)
        if job is not None and job.state in J.RUNNING:
            return job.snapshot(time.monotonic()), False
        self._refuse_overlap(manifest, path, "seed")
        if self.store is not None:
            manifest = self.store.keep_manifest(manifest)
        job = J.SeedJob(manifest, path, trackers, peers, super_seeding)
        self._start_seed(job)
        self._jobs[job.id] = job
        self._record(job)
        return job.snapshot(time.monotonic()), True

    def _start_seed(self, job) -> None:
        """Seed without hashing first: libtorrent's seed mode checks each piece the first
        time a peer asks for it, so a wrong image never sends a wrong byte."""
        fd, info = open_source(job.path)
        claims = [_FdClaim(fd)]
        try:
            if info.size < job.manifest.image_size:
                raise ManifestError(f"{job.path}: holds {info.size} bytes but manifest {job.manifest.name} "
                                    f"describes {job.manifest.image_size}")
            if job.manifest.source.get("fingerprint") != _fingerprint_or_none(held_path(fd)):
                verify.spot_check(job.manifest, fd, job.path)
            slices = SliceMap(job.path, job.manifest.files, read_only=True, io_path=held_path(fd))
            claims.append(slices)
            job.paths = slices.paths
            atp = self._params(job)
            atp.flags |= lt.torrent_flags.seed_mode | lt.torrent_flags.no_verify_files
            if job.super_seeding:
                atp.flags |= lt.torrent_flags.super_seeding
            job.claims = claims
            self._add(job, atp)
        except BaseException:
            for claim in claims:
                claim.release()
            job.claims = []
            raise
        job.error = ""
        job.set_state(J.CHECKING)

    def _put_fetch(self, manifest, target, trackers, peers, seed_after, stall_timeout, require_device,
                   local_sources=True, check_target="auto"):
        if self.store is None:
            raise StateError("a fetch needs a state directory for its resume data")
        claimed = target if isinstance(target, Target) else None
        path = claimed.path if claimed else os.path.abspath(target)
        try:
            job = self._existing(manifest, "fetch", path)
            if job is not None and (job.state in J.RUNNING or (job.state == J.VERIFIED and not seed_after)):
                if claimed:
                    claimed.release()
                return job.snapshot(time.monotonic()), False
            self._refuse_overlap(manifest, path, "fetch")
            torrent_info(manifest)  # before the claim: an impossible torrent never grows a target
            protect = own_files(manifest)
            manifest = self.store.keep_manifest(manifest)
            job = J.FetchJob(manifest, path, trackers, peers, seed_after, stall_timeout, require_device,
                             local_sources, check_target)
            claim = claimed or self._claim(job, protect)
        except BaseException:
            if claimed:
                claimed.discard()
            raise
        # Resume data of an earlier job of this image on another target is never loaded here.
        previous = self.store.read_record(job.id)
        changed = ident.difference(previous.get("identity"), claim.identity) if previous else ""
        if changed and os.path.exists(self.store.resume_path(job.id)):
            job.warning = (f"resume data in {self.store.resume_path(job.id)} was written for another target than "
                           f"{job.path} ({changed}); starting from zero")
            log.warning("%s", job.warning)
            self._set_aside(self.store.resume_path(job.id))
        # Before a byte is written: no older job of this target may ever take it up again,
        # and a crash from here on finds this job's record.
        self._supersede(job)
        job.identity = claim.identity
        self._record(job)
        try:
            self._start_fetch(job, claim)
        except BaseException:
            claim.discard()
            previous = self._jobs.get(job.id)
            if previous is not None:
                self._record(previous)
            else:
                self.store.forget_record(job.id)
            raise
        self._jobs[job.id] = job
        self._record(job)
        return job.snapshot(time.monotonic()), True

    def _claim(self, job, protect=()) -> Target:
        """Claim a fetch's target: the guard's refusals first, then every check of ``claim_target``."""
        if self.target_guard is not None:
            self.target_guard(job.path)
        claim = claim_target(job.path, job.manifest.image_size, require_device=job.require_device,
                             protect=tuple(protect) + own_files(job.manifest), private_dirs=(self.store.root,))
        if self.target_guard is not None:
            # Again on what the claim holds: a name moved between the guard and the open
            # must not slip past it.
            held = claim.io_path
            try:
                self.target_guard(held)
            except BaseException as exc:
                claim.discard()
                if isinstance(exc, TargetRefused):
                    raise TargetRefused(str(exc).replace(held, job.path)) from None
                raise
        return claim

    def _supersede(self, job) -> None:
        """Mark every other finished fetch of ``job``'s target superseded: what it verified
        or left there is gone, and it never writes again unless it is put again."""
        for other in self._jobs.values():
            if other.id == job.id or other.action != "fetch" or other.state not in J.FINAL:
                continue
            if overlaps(other.path, job.path):
                other.set_state(J.STOPPED, f"superseded: {job.path} is written by the fetch of {job.manifest.name}")
                self._record(other)

    def _start_fetch(self, job, claim, resuming=False) -> None:
        """Add the fetch's torrent over its claimed target, resuming where it was. Every
        access goes through the claim (``io_path``): the device checked, whatever its name
        means later. A recorded job (``resuming``) goes on only on the very target it was
        writing: same device, partition, disk and backing file."""
        job.resume_path = self.store.resume_path(job.id)
        if resuming:
            changed = ident.difference(job.identity, claim.identity)
            if changed:
                raise TargetRefused(f"{job.path}: is not the target this job was writing ({changed}); nothing "
                                    f"was written: put the job again to start over on what {job.path} is now")
        # From now on the slot is being written: its ledger must not call it clean, even
        # when this job stops or crashes halfway (the local phase reads the entry first).
        target_entry = self._ledger_writing(job)
        slices = SliceMap(claim.path, job.manifest.files, read_only=False, io_path=claim.io_path)
        job.claims = [claim, slices]
        job.io_path = claim.io_path
        try:
            job.paths = slices.paths
            identity = claim.identity
            atp = self._params(job)
            resumed = self._load_resume(job, identity)
            job.identity = identity
            job.resumed_bytes = _bytes_in(job.manifest, resumed.have_pieces) if resumed is not None else 0
            if resumed is not None:
                resumed.ti, resumed.save_path = atp.ti, atp.save_path
                resumed.renamed_files, resumed.trackers = atp.renamed_files, atp.trackers
                resumed.flags = atp.flags
                atp = resumed
            elif job.local_sources and self.ledger is not None:
                self._start_local(job, identity, target_entry)
                return
            # A device reports size 0 to libtorrent, which would throw the resume data
            # away (or, forced to recheck, forget every piece). Integrity is ours: the
            # final digest and per-piece check in verify.
            atp.flags |= lt.torrent_flags.no_verify_files
            self._add(job, atp)
        except BaseException:
            slices.release()
            job.claims = []
            raise
        job.error = ""
        job.cancel.clear()
        job.set_state(J.DOWNLOADING)

    def _ledger_writing(self, job):
        """The target's ledger entry as it was, now marked changed (or removed, when it
        cannot be marked); None without one. A ledger that cannot be written costs the
        local phase's knowledge, never the fetch."""
        if self.ledger is None:
            return None
        try:
            self.ledger.note_in_use()
            entry = self.ledger.entry(job.path)
            self.ledger.mark_changed(job.path, f"written by the fetch of {job.manifest.name}")
            return entry
        except StateError as exc:
            log.error("slot ledger: %s", exc)
            job.warning = f"slot ledger not updated: {exc}"
            self.ledger.forget(job.path)
            return None

    def _start_local(self, job, identity, target_entry) -> None:
        """Look for the image's pieces on this host's own disks before joining the swarm."""
        try:
            sources = [entry for entry in self.ledger.entries() if self._usable_source(job, entry)]
        except (StateError, OSError) as exc:
            log.error("slot ledger: %s", exc)
            sources = []
        settings = self.settings

        def find(cancel, progress):
            return delta.find_local(job.manifest, job.path, identity, target_entry, sources, job.check_target,
                                    settings.link_rate, cancel=cancel, progress=progress, io_path=job.io_path)

        job.error = ""
        job.local = None
        job.local_counts = {}
        job.set_state(J.LOCAL)
        job.start_local(find)

    def _usable_source(self, job, entry) -> bool:
        """A slot to copy pieces from: not the target, not being written, still the same device."""
        if overlaps(entry.path, job.path):
            return False
        for other in self._jobs.values():
            if other.action == "fetch" and other.state in J.WRITING and overlaps(entry.path, other.path):
                return False
        try:
            return not ident.difference(entry.identity, ident.of_path(entry.path))
        except (OSError, P2PFleetError):
            return False

    def _local_done(self, job, result) -> None:
        job.worker_result = None
        if self._closing or not job.claims:
            return  # the session closes, or the job let its target go: it joins no swarm
        if result[0] == "error":
            self._fail(job, result[1])
            return
        if result[0] != "found":
            return  # cancelled: the stop that cancelled it finishes the job
        found = result[1]
        job.local = found
        job.local_counts = {"kept_bytes": found.kept_bytes, "zero_bytes": found.zero_bytes,
                            "copied_bytes": found.copied_bytes, "rejected_pieces": found.rejected_pieces,
                            "checked_bytes": found.checked_bytes}
        for note in found.notes:
            log.info("%s: %s", job.path, note)
        log.info("%s: %d of %d bytes of %s found locally (kept %d, zero %d, copied %d)", job.path,
                 found.local_bytes, job.manifest.image_size, job.manifest.name, found.kept_bytes,
                 found.zero_bytes, found.copied_bytes)
        for claim in job.claims:
            if isinstance(claim, SliceMap):
                claim.drop_caches()  # a slice's own page cache must not hide what was written
        atp = self._params(job)
        atp.have_pieces = found.have
        atp.flags |= lt.torrent_flags.no_verify_files
        self._add(job, atp)
        job.resume_dirty = True  # the bitfield is saved at once: a restart never looks again
        job.set_state(J.DOWNLOADING)
        self._record(job)

    def _load_resume(self, job, identity):
        """Resume data written for this very target, or None — never dropped silently."""
        path = job.resume_path
        if not os.path.exists(path):
            return None
        record = self.store.read_record(job.id)
        if record is None or record.get("identity") != identity:
            job.warning = (f"resume data in {path} was written for another target than {job.path}; "
                           "starting from zero")
            log.warning("%s", job.warning)
            self._set_aside(path)
            return None
        try:
            return lt.read_resume_data(read_capped(path, 64 << 20, "resume data", error=StateError))
        except (RuntimeError, StateError) as exc:
            job.warning = f"resume data in {path} is unusable ({exc}); starting from zero"
            log.warning("%s", job.warning)
            self._set_aside(path)
            return None

    @staticmethod
    def _set_aside(path) -> None:
        """Keep rejected resume data for inspection, out of the way of the next start (a
        crash before the first new save must not find it again under the new identity)."""
        try:
            os.replace(path, path + ".rejected")
        except OSError as exc:
            log.warning("%s: cannot set aside: %s", path, exc.strerror)

    def _stop(self, job_id) -> None:
        job = self._jobs.get(job_id)
        if job is None:
            raise JobConflict(f"no job {job_id} on this host")
        if job.state not in J.FINAL:
            self._unload(job, J.STOPPED)

    def _forget(self, job_id) -> None:
        job = self._jobs.get(job_id)
        if job is not None and job.handle is None and job.stopping is None:
            del self._jobs[job_id]
            if self.store is not None:
                self.store.forget(job_id)

    def _resume_recorded(self) -> list:
        """Take up the recorded jobs, newest first. A running fetch goes on only when nothing
        newer claimed its target since (a newer job's record, or a newer verified image in
        the slot ledger) and its target is the very one it was writing; otherwise it is
        recorded failed or superseded and never writes again unless it is put again."""
        resumed, newer = [], []
        for record in sorted(self.store.records(), key=lambda r: r.get("updated") or 0, reverse=True):
            ih = record["info_hash"]
            if ih in self._jobs:
                continue
            try:
                manifest = Manifest.load(self.store.path(ih, ".manifest.json"))
                job = self._job_from_record(manifest, record)
            except (P2PFleetError, KeyError, TypeError, ValueError, OSError) as exc:
                log.error("job %s: record cannot be taken up: %s", ih, exc)
                continue
            self._jobs[ih] = job
            if job.state in J.RUNNING:
                why = self._superseded(job, record, newer) if job.action == "fetch" else ""
                if why:
                    log.warning("job %s (%s on %s) not resumed: %s", ih[:12], job.action, job.path, why)
                    job.set_state(J.STOPPED, why)
                    self._record(job)
                else:
                    self._resume(job)
            if job.action == "fetch":
                newer.append(job)
            resumed.append(job.snapshot(time.monotonic()))
        return resumed

    def _superseded(self, job, record, newer) -> str:
        """Why a recorded running fetch must not take its target up again, or ``""``."""
        for other in newer:
            if overlaps(other.path, job.path):
                return f"superseded: {job.path} was claimed later by the fetch of {other.manifest.name}"
        entry = self.ledger.entry(job.path) if self.ledger is not None else None
        if entry is not None and entry.info_hash != job.id and entry.recorded > float(record.get("updated") or 0):
            return f"superseded: {job.path} holds {entry.name}, verified after this job last ran"
        return ""

    def _resume(self, job) -> None:
        try:
            torrent_info(job.manifest)
            if job.action == "fetch":
                claim = self._claim(job)
                try:
                    self._start_fetch(job, claim, resuming=True)
                except BaseException:
                    claim.release()
                    raise
            else:
                self._start_seed(job)
            log.info("resumed %s job of %s on %s", job.action, job.manifest.name, job.path)
        except (P2PFleetError, OSError, ValueError, TypeError, RuntimeError) as exc:
            # Recorded failed: a job that could not take its target up never comes back by
            # itself (its target may hold a newer image by then); putting it again does.
            log.error("job %s (%s on %s) cannot resume: %s", job.id[:12], job.action, job.path, exc)
            job.release_claims()
            job.handle = None
            job.set_state(J.FAILED, f"cannot resume: {exc}")
        self._record(job)

    def _job_from_record(self, manifest, record):
        peers = [tuple(p) for p in record.get("peers", [])]
        if record["action"] == "fetch":
            job = J.FetchJob(manifest, record["path"], record.get("trackers", []), peers,
                             bool(record.get("seed_after")), float(record.get("stall_timeout") or 0),
                             bool(record.get("require_device")), bool(record.get("local_sources", True)),
                             record.get("check_target") if record.get("check_target") in delta.CHECK_MODES
                             else "auto")
        elif record["action"] == "seed":
            job = J.SeedJob(manifest, record["path"], record.get("trackers", []), peers,
                            bool(record.get("super_seeding")))
        else:
            raise ValueError(f"unknown action {record['action']!r}")
        if record.get("state") not in J.STATES:
            raise ValueError(f"unknown state {record.get('state')!r}")
        job.state = record["state"]
        job.error = str(record.get("error") or "")
        job.digest = str(record.get("digest") or "")
        job.identity = record.get("identity")
        job.repair_round = int(record.get("repair_round") or 0)
        # The payload counters survive restarts: a job verified before one still says what came.
        job.downloaded_before = _counter(record.get("downloaded"))
        job.uploaded_before = _counter(record.get("uploaded"))
        local = record.get("local")
        if isinstance(local, dict):
            job.local_counts = {k: int(v) for k, v in local.items() if isinstance(v, int) and not isinstance(v, bool)}
        return job

    def _reconfigure(self, upload_limit, download_limit, allowed_networks, link_rate) -> None:
        self.settings.upload_limit, self.settings.download_limit = upload_limit, download_limit
        self.settings.link_rate = link_rate
        self.settings.allowed_networks = allowed_networks
        self._lt.apply_settings({"upload_rate_limit": upload_limit, "download_rate_limit": download_limit})
        self._lt.set_ip_filter(_ip_filter(allowed_networks))

    def _begin_close(self) -> None:
        self._closing = True
        for job in self._jobs.values():
            self._unload(job)


def torrent_info(manifest):
    """libtorrent's own reading of the manifest's torrent, checked against the manifest.

    Run before a target is claimed: a torrent libtorrent refuses, or reads with another
    layout than the manifest's (where a split image's files are written), never creates
    or grows a target.
    """
    where = manifest.torrent_path
    try:
        ti = lt.torrent_info(lt.bdecode(manifest.torrent_bytes()))
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ManifestError(f"{where}: libtorrent rejects the torrent: {str(exc)[:200]}") from None
    files = ti.layout()
    read = (ti.total_size(), ti.piece_length(), ti.num_pieces(),
            [(files.file_offset(i), files.file_size(i)) for i in range(files.num_files())])
    described = (manifest.image_size, manifest.piece_size, manifest.piece_count,
                 [(vf.offset, vf.size) for vf in manifest.files])
    if read != described:
        raise ManifestError(f"{where}: libtorrent reads another size, piece size or file layout than the "
                            f"manifest {manifest.name} describes")
    return ti


def own_files(manifest) -> tuple:
    """The files a fetch of ``manifest`` reads, which must never become its target."""
    return (manifest.path, manifest.torrent_path)


def _fingerprint_or_none(path):
    try:
        return fingerprint(path)
    except (OSError, P2PFleetError):
        return None


def _counter(value) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _bytes_in(manifest, have_pieces) -> int:
    """Bytes of the image covered by the pieces marked as had."""
    count = sum(1 for had in have_pieces if had)
    if count and len(have_pieces) == manifest.piece_count and have_pieces[-1]:
        last = manifest.image_size - (manifest.piece_count - 1) * manifest.piece_size
        return (count - 1) * manifest.piece_size + last
    return count * manifest.piece_size
