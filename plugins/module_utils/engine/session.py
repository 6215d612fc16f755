"""One host's libtorrent *session*, owned by one loop thread, and the jobs it runs.

Threads: the loop thread (``_run``) is the only one that touches libtorrent and moves
jobs. Each turn it runs the commands other threads put, hands each of libtorrent's alerts
to the job whose torrent it concerns, gives every job its turn (``jobs.Job.step``) and
publishes every job's ``JobSnapshot``. Every public method may be called from any thread:
it hands a command to the loop and waits for its answer, or reads the published snapshots.

What is decided where: the session decides which jobs exist (a put that names a job
again, or clashes with one, or overlaps another's target; the jobs recorded in the state
directory that are taken up again); each job decides its own moves (``jobs``), through
the port the session hands it (``torrents.Port``: add, save and take out its torrent,
write its record). libtorrent's LAN profile is ``torrents.lan_settings``.
"""
import concurrent.futures
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field

from . import delta
from . import jobs as J
from .errors import P2PFleetError, SessionError
from .host_jobs import HostJobs
from .records import JobStore
from .runtime import libtorrent as lt
from .slots import Ledger
from .torrents import Port, ip_filter, lan_settings

log = logging.getLogger("p2pfleet.session")

UPDATE_INTERVAL = 0.5


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


class Session:
    """A libtorrent session for one host and the jobs in it. Every method is thread-safe."""

    def __init__(self, settings: SessionSettings = None, store: JobStore = None, target_guard=None):
        """``target_guard(path)``: raises ``TargetRefused`` for a fetch target this host must
        never write (the agent's: the slot the boot environment falls back to); asked before
        a target is claimed, when a job is put and when a recorded job is taken up again."""
        self.settings = settings or SessionSettings()
        self.store = store
        self.target_guard = target_guard
        self.ledger = Ledger(store.root) if store is not None else None
        params = lt.session_params(lan_settings(self.settings))
        params.disk_io_constructor = "posix_disk_io_constructor"
        self._lt = lt.session(params)
        # Local-network peers normally bypass rate limits; a lab admin limiting a job
        # means the LAN, so every address goes to the global (limited) peer class.
        everyone = lt.ip_filter()
        everyone.add_rule("0.0.0.0", "255.255.255.255", 1 << lt.session.global_peer_class_id)
        everyone.add_rule("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 1 << lt.session.global_peer_class_id)
        self._lt.set_peer_class_filter(everyone)
        self._lt.set_ip_filter(ip_filter(self.settings.allowed_networks))
        self._wait_listening()
        self._jobs = {}
        self._port = Port(self._lt, store, self.settings, self._jobs, self.ledger)
        self._host = HostJobs(self._jobs, self._port, store, self.ledger, target_guard)
        self._commands = queue.Queue()
        self._cond = threading.Condition()
        self._published = {}
        self._crash = None
        self._last_update = 0.0
        self._blocked_logged = set()
        self._blocked_peers = 0
        self._thread = threading.Thread(target=self._run, name="p2pfleet-session", daemon=True)
        self._thread.start()

    def _wait_listening(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for alert in self._lt.pop_alerts():
                if isinstance(alert, lt.listen_failed_alert):
                    raise SessionError(f"cannot listen on {alert.address}:{alert.port}: {alert.message()}")
                if isinstance(alert, lt.listen_succeeded_alert):
                    return
            self._lt.wait_for_alert(100)
        raise SessionError(f"libtorrent did not start listening within {timeout:g} s")

    @property
    def listen_port(self) -> int:
        return self._lt.listen_port()

    # -- the public, thread-safe face ------------------------------------------------
    def put_seed(self, manifest, image_path, trackers=(), peers=(), super_seeding=False, dry_run=False):
        """Seed an image; ``(snapshot, changed)``. The same seed again changes nothing.
        ``dry_run``: only say whether it would change anything (the snapshot is the job
        there is, or None); a put that would be refused is refused all the same."""
        return self._call(self._host.put_seed, manifest, os.path.abspath(image_path), trackers, peers, super_seeding,
                          dry_run)

    def put_fetch(self, manifest, target, trackers=(), peers=(), seed_after=False, stall_timeout=300.0,
                  require_device=False, local_pieces=True, check_target="auto", dry_run=False):
        """Fetch an image into ``target`` (a path, or a ``Target`` already claimed, whose
        claim then belongs to the job); ``(snapshot, changed)``. The same fetch again
        returns the existing job unchanged. ``local_pieces``: take the pieces this host
        already holds from its own disks first; ``check_target``: when to
        read the target for pieces already there (``auto``, ``always``, ``never``; see
        ``delta``); ``dry_run``: as for ``put_seed`` (the target is not claimed)."""
        if check_target not in delta.CHECK_MODES:
            raise SessionError(f"check_target must be one of {', '.join(delta.CHECK_MODES)}, got {check_target!r}")
        return self._call(self._host.put_fetch, manifest, target, trackers, peers, seed_after, stall_timeout,
                          require_device, bool(local_pieces), check_target, dry_run)

    def slot_ledger(self) -> list:
        """What this host knows its slots hold (``slots.LedgerEntry.as_dict`` each)."""
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
        self._call(self._host.stop, job_id)
        self.wait_for(lambda jobs: job_id not in jobs or jobs[job_id].final, timeout, f"job {job_id} to stop")
        return self.job(job_id)

    def forget(self, job_id, timeout: float = 60.0) -> None:
        """Stop a job if it runs and forget it: its record and resume data are removed."""
        self.stop(job_id, timeout)
        self._call(self._host.forget, job_id)

    def resume_recorded(self) -> list:
        """Take up every job recorded in the state directory; running ones carry on."""
        return self._call(self._host.resume_recorded)

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
            raise SessionError(f"the session loop stopped: {self._crash}")

    def wait_for(self, predicate, timeout: float, what: str = "the session") -> dict:
        """Block until ``predicate(snapshots by id)`` holds; SessionError after ``timeout``."""
        with self._cond:
            ok = self._cond.wait_for(lambda: self._crash is not None or predicate(self._published), timeout)
            if self._crash is not None:
                raise SessionError(f"the session loop stopped: {self._crash}")
            if not ok:
                raise SessionError(f"timed out after {timeout:g} s waiting for {what}")
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
            except SessionError:
                pass
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("the session loop did not finish within %g s", timeout)
        for job in self._jobs.values():
            job.release_claims()
        self._port.join_reporters()
        self._lt.pause()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _call(self, fn, *args, timeout: float = 120.0):
        if self._crash is not None:
            raise SessionError(f"the session loop stopped: {self._crash}")
        future = concurrent.futures.Future()
        self._commands.put((fn, args, future))
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise SessionError(f"the session did not answer within {timeout:g} s") from None

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
                    self._update(now)
                for job in list(self._jobs.values()):
                    self._guarded(job.step, self._port, now, job=job)
                self._publish()
                if self._port.closing and not any(j.handle is not None or j.awaiting for j in self._jobs.values()):
                    return
        except BaseException as exc:  # a bug: every waiter must hear of it, not hang
            log.exception("the session loop crashed")
            self._crash = f"{type(exc).__name__}: {exc}"
            while not self._commands.empty():
                _fn, _args, future = self._commands.get_nowait()
                future.set_exception(SessionError(f"the session loop stopped: {self._crash}"))
            with self._cond:
                self._cond.notify_all()

    def _update(self, now) -> None:
        """The jobs' rates from their last status, and a new status asked of libtorrent."""
        self._last_update = now
        for job in self._jobs.values():
            if job.status is not None:
                job.rate_now = job.rates.update(now, job.status.total_payload_download,
                                                job.status.total_payload_upload)
        self._lt.post_torrent_updates()

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
                future.set_exception(SessionError(f"{where}{exc.strerror or exc}"))
            except (ValueError, TypeError, RuntimeError) as exc:
                # Input no check foresaw (a NUL in a path, an address libtorrent refuses):
                # the caller gets one line, the loop and the other jobs go on.
                log.exception("command %s failed", getattr(fn, "__name__", fn))
                future.set_exception(SessionError(f"{type(exc).__name__}: {exc}"))

    def _guarded(self, fn, *args, job=None) -> None:
        """Run one step of the loop; a job whose step raises fails alone, with the reason."""
        if job is None and args and isinstance(args[0], lt.alert):
            job = self._job_for_any(args[0])
        try:
            fn(*args)
        except (P2PFleetError, OSError, ValueError, TypeError, RuntimeError) as exc:
            log.exception("job step failed")
            if job is not None:
                job.broke(self._port, exc)

    def _publish(self) -> None:
        now = time.monotonic()
        snapshots = {job_id: job.snapshot(now) for job_id, job in self._jobs.items()}
        with self._cond:
            self._published = snapshots
            self._cond.notify_all()

    # -- alerts: each to the job whose torrent it concerns -------------------------------
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
        elif isinstance(alert, lt.torrent_removed_alert):
            job = self._jobs.get(str(alert.info_hashes.v1))
            if job is not None and alert.handle == job.handle:
                job.on_removed()
        elif isinstance(alert, lt.peer_blocked_alert):
            self._blocked(alert)
        else:
            job = self._job_of(alert)
            if job is not None:
                self._to_job(job, alert)

    def _to_job(self, job, alert) -> None:
        port = self._port
        if isinstance(alert, lt.save_resume_data_alert):
            job.on_resume_saved(port, alert.params)
        elif isinstance(alert, lt.save_resume_data_failed_alert):
            job.on_resume_not_saved(alert.message())
        elif isinstance(alert, lt.piece_finished_alert):
            job.on_piece_finished()
        elif isinstance(alert, lt.hash_failed_alert):
            job.on_hash_failed(port, alert.piece_index)
        elif isinstance(alert, (lt.file_error_alert, lt.torrent_error_alert)):
            job.on_error(port, alert.message())
        elif isinstance(alert, lt.torrent_finished_alert):
            job.on_finished(port)
        elif isinstance(alert, lt.tracker_error_alert):
            job.on_tracker_error(alert.message())
        elif isinstance(alert, lt.tracker_reply_alert):
            job.on_tracker_reply(port)

    def _blocked(self, alert) -> None:
        with self._cond:
            self._blocked_peers += 1
        address = str(alert.ip[0]) if isinstance(alert.ip, tuple) else str(alert.ip)
        if address not in self._blocked_logged and len(self._blocked_logged) < 1000:
            self._blocked_logged.add(address)
            log.warning("refused peer %s: outside the allowed networks", address)

    def _reconfigure(self, upload_limit, download_limit, allowed_networks, link_rate) -> None:
        self.settings.upload_limit, self.settings.download_limit = upload_limit, download_limit
        self.settings.link_rate = link_rate
        self.settings.allowed_networks = allowed_networks
        self._lt.apply_settings({"upload_rate_limit": upload_limit, "download_rate_limit": download_limit})
        self._lt.set_ip_filter(ip_filter(allowed_networks))

    def _begin_close(self) -> None:
        self._port.closing = True
        for job in self._jobs.values():
            job.unload(self._port)
