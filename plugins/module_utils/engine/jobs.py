"""Jobs: what one host does with one image — seed it, or fetch it into a target.

A job is a state machine, and its moves are its own methods: ``FetchJob`` reads top to
bottom as the path of one fetch. Only the session's loop thread moves a job (see
``session``), handing each move a *port* (``torrents.Port``) to add, save and take out the
job's torrent and write its record; everyone else reads the ``JobSnapshot`` the loop
publishes::

    fetch:  claimed → local → downloading ⇄ stalled → flushing → verifying → verified → seeding
                                  ↑                                  │
                                  └──────── repairing (round n) ←────┘  (wrong pieces found)

``local``: the pieces this host already holds are taken from its own disks (see ``delta``)
before the job joins the swarm; a job that resumes with resume data skips it.
    seed:   checking → seeding
    any:    → failed (one line says why) | stopped (asked to)

``verified``, ``failed`` and ``stopped`` hold nothing: no torrent, no claim on a target.
Every change of state is written to the job's *record* (see ``records``), so an agent
that restarts (or a host that reboots) finds its jobs again and carries on where they were.
"""
import dataclasses
import logging
import threading
import time

from . import delta
from . import identity as ident
from . import verify
from .errors import Cancelled, ManifestError, P2PFleetError, StateError, TargetRefused, VerifyError
from .image import SliceMap, Target, claim_target, held_path, open_source, overlaps, retire_fd
from .metainfo import Manifest, fingerprint
from .slots import slot_fingerprint
from .torrents import ALERT_TIMEOUT, own_files, torrent_info

log = logging.getLogger("p2pfleet.jobs")

CLAIMED, LOCAL, CHECKING, DOWNLOADING, STALLED = "claimed", "local", "checking", "downloading", "stalled"
FLUSHING, VERIFYING, REPAIRING = "flushing", "verifying", "repairing"
VERIFIED, SEEDING, FAILED, STOPPED = "verified", "seeding", "failed", "stopped"

STATES = (CLAIMED, LOCAL, CHECKING, DOWNLOADING, STALLED, FLUSHING, VERIFYING, REPAIRING, VERIFIED, SEEDING,
          FAILED, STOPPED)
FINAL = frozenset({VERIFIED, FAILED, STOPPED})
# States in which a job holds a torrent and a target, and resumes after a restart.
RUNNING = frozenset(STATES) - FINAL
# States in which a fetch writes its target (verifying and seeding only read it).
WRITING = frozenset({CLAIMED, LOCAL, DOWNLOADING, STALLED, FLUSHING, REPAIRING})
MAX_REPAIR_ROUNDS = 3
# Resume data is saved at most this often while pieces arrive, and sooner once enough
# pieces wait to be saved: a kill loses at most about a second of transfer.
RESUME_SAVE_INTERVAL = 1.0
RESUME_SAVE_PIECES = 16
RESUME_SAVE_MIN_INTERVAL = 0.25
PEER_RETRY_INTERVAL = 5.0
# How often a fetch looks whether its target's name still names the device it holds.
NAME_CHECK_INTERVAL = 1.0
# How often a fetch in its local phase (no torrent yet, so no announce of libtorrent's)
# announces itself to its trackers.
LOCAL_ANNOUNCE_INTERVAL = 10.0
# A local-pieces worker looks at its cancel flag between pieces and zero-out chunks: it
# stops within seconds. The target is never released while it may still write.
WORKER_STOP_TIMEOUT = 600.0


@dataclasses.dataclass(frozen=True)
class JobSnapshot:
    """One job as the loop last saw it. Immutable: safe to hand to any thread, JSON-ready."""

    id: str  # the image's info hash: a host has one job per image
    action: str  # "seed" or "fetch"
    name: str
    path: str  # the image a seed reads, or the target a fetch writes
    state: str
    bytes_done: int = 0
    bytes_total: int = 0
    download_rate: int = 0
    upload_rate: int = 0
    peers: int = 0
    seeds: int = 0
    uploaded: int = 0
    downloaded: int = 0
    resumed_bytes: int = 0
    local_bytes: int = 0  # taken from this host's disks, never fetched: kept + zero + copied
    kept_bytes: int = 0  # already correct in the target
    zero_bytes: int = 0  # zero pieces filled locally
    copied_bytes: int = 0  # copied from another slot
    rejected_pieces: int = 0  # local candidates that failed their SHA-1 check (fetched instead)
    verify_done: int = 0
    repair_round: int = 0
    bad_pieces: int = 0
    seed_after: bool = False
    digest: str = ""
    eta: float = None
    error: str = ""
    warning: str = ""
    tracker_error: str = ""
    state_since: float = 0.0
    stalled_for: float = 0.0

    @property
    def info_hash(self) -> str:
        return self.id

    @property
    def fraction(self) -> float:
        return self.bytes_done / self.bytes_total if self.bytes_total else 1.0

    @property
    def final(self) -> bool:
        return self.state in FINAL

    def as_dict(self) -> dict:
        fields = dataclasses.asdict(self)
        data = {key: fields[key] for key in ("id", "action", "name")}
        data["info_hash"] = self.id  # the agent API's name for ``id``, kept beside it
        data.update(fields)
        data["percent"] = round(100.0 * self.fraction, 2)
        return data


class RateMeter:
    """Payload rates over the last few seconds, from byte counters.

    libtorrent's own rates move only on its one-second tick and read 0 for most of a
    short LAN transfer; counters sampled at every update show what really happens.
    """

    WINDOW = 3.0

    def __init__(self):
        self._samples = []

    def update(self, now, down, up) -> tuple:
        self._samples.append((now, down, up))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.WINDOW:
            self._samples.pop(0)
        t0, down0, up0 = self._samples[0]
        if now - t0 < 0.2:
            return 0, 0
        return int((down - down0) / (now - t0)), int((up - up0) / (now - t0))

    def reset(self):
        self._samples = []


class Job:
    """State and moves shared by seed and fetch jobs.

    Moved only by the session's loop thread, through the ``port`` it hands each move (a
    ``torrents.Port``: add, save and take out the torrent, write the record). A move that
    must wait for libtorrent leaves its continuation in ``awaiting``; the loop resolves it.
    """

    action = ""

    def __init__(self, manifest: Manifest, path: str, trackers=(), peers=(), seed_after=False):
        self.manifest = manifest
        self.id = manifest.info_hash
        self.path = path
        self.trackers = list(trackers)
        self.peers = [tuple(p) for p in peers]
        self.seed_after = seed_after
        self.state = CLAIMED
        self.state_since = time.time()
        self.error = ""
        self.warning = ""
        self.tracker_error = ""
        self.stripe = None  # the tracker id last followed (stripes.py)
        self.digest = ""
        self.handle = None
        self.status = None
        self.paths = []  # what libtorrent opens for each file of the torrent
        self.io_path = None  # the held path of a fetch's claimed target: every read and write goes there
        self.last_name_check = 0.0
        self.last_local_announce = 0.0
        self.resume_path = None
        self.claims = []
        self.identity = None
        self.resumed_bytes = 0
        self.local = None  # the delta.LocalResult of the local phase
        self.local_counts = {}  # its byte counters, kept in the record
        self.repair_round = 0
        self.bad_pieces = 0
        self.verify_done = 0
        self.last_done = 0  # bytes done when the torrent was last taken out
        self.downloaded_before = 0  # payload of earlier torrents of this job (repair rounds)
        self.uploaded_before = 0
        self.rates = RateMeter()
        self.rate_now = (0, 0)
        self.last_progress = (0, time.monotonic())
        self.resume_dirty = False
        self.pieces_since_save = 0
        self.saves_in_flight = 0
        self.last_resume_save = 0.0
        self.last_peer_retry = 0.0
        self.awaiting = None  # ("save" | "remove" | "worker", deadline, then)
        self.stopping = None  # final state the job is being stopped into
        self.worker = None
        self.worker_result = None
        self.cancel = threading.Event()

    # -- what the job says of itself ---------------------------------------------------
    def set_state(self, state, error="") -> None:
        if state != self.state:
            log.info("%s %s (%s): %s -> %s%s", self.action, self.manifest.name, self.path, self.state, state,
                     f": {error}" if error else "")
            self.state = state
            self.state_since = time.time()
        if error:
            self.error = error

    def record(self) -> dict:
        return {
            "info_hash": self.id, "action": self.action, "name": self.manifest.name, "path": self.path,
            "state": self.state, "error": self.error, "warning": self.warning, "trackers": self.trackers,
            "peers": [list(p) for p in self.peers], "seed_after": self.seed_after, "identity": self.identity,
            "digest": self.digest, "resumed_bytes": self.resumed_bytes, "repair_round": self.repair_round,
            "local": self.local_counts, "downloaded": self.payload()[0], "uploaded": self.payload()[1],
        }

    def payload(self) -> tuple:
        """``(downloaded, uploaded)`` payload bytes of the job's whole life: earlier torrents
        (repair rounds, agent runs before a restart) and the one in the session now."""
        down, up = self.downloaded_before, self.uploaded_before
        if self.status is not None:
            down += self.status.total_payload_download
            up += self.status.total_payload_upload
        return down, up

    def named(self, text: str) -> str:
        """``text`` with every path this job does I/O through (its claim's held descriptors,
        the slices of a split image) shown as the target the administrator named."""
        for held in sorted({p for p in [self.io_path, *self.paths] if p and p != self.path}, key=len, reverse=True):
            text = text.replace(held, self.path)
        return text

    def release_claims(self) -> None:
        for claim in self.claims:
            claim.release()
        self.claims = []

    def snapshot(self, now: float) -> JobSnapshot:
        st = self.status
        done, total, peers, seeds = self.last_done, 0, 0, 0
        down, up = self.payload()
        if st is not None:
            done, total = st.total_wanted_done, st.total_wanted
            peers, seeds = st.num_peers, st.num_seeds
        if self.state == VERIFIED:
            done = self.manifest.image_size
        elif self.state == LOCAL and self.local is not None:
            done = self.local.local_bytes
        counts = self.local_counts or (vars(self.local) if self.local is not None else {})
        total = total or self.manifest.image_size
        rate, up_rate = self.rate_now if self.state in RUNNING else (0, 0)
        stalled_for = 0.0
        if self.state == STALLED:
            stalled_for = round(time.monotonic() - self.last_progress[1], 1)
        return JobSnapshot(
            id=self.id, action=self.action, name=self.manifest.name, path=self.path,
            state=self.state, bytes_done=done, bytes_total=total, download_rate=rate, upload_rate=up_rate,
            peers=peers, seeds=seeds, uploaded=up, downloaded=down, resumed_bytes=self.resumed_bytes,
            local_bytes=sum(counts.get(k, 0) for k in ("kept_bytes", "zero_bytes", "copied_bytes")),
            kept_bytes=counts.get("kept_bytes", 0), zero_bytes=counts.get("zero_bytes", 0),
            copied_bytes=counts.get("copied_bytes", 0), rejected_pieces=counts.get("rejected_pieces", 0),
            verify_done=self.verify_done, repair_round=self.repair_round, bad_pieces=self.bad_pieces,
            seed_after=self.seed_after, digest=self.digest,
            eta=round((total - done) / rate, 1) if rate > 0 and done < total else None,
            error=self.error, warning=self.warning, tracker_error=self.tracker_error,
            state_since=self.state_since, stalled_for=stalled_for,
        )

    def waits_for(self, kind) -> bool:
        """Whether the job waits for the answer to an asynchronous step of this kind."""
        return bool(self.awaiting) and self.awaiting[0] == kind

    # -- the loop's turn -------------------------------------------------------------------
    def step(self, port, now) -> None:
        """One turn of the loop: a step that waits is watched, else the job moves on."""
        if self.awaiting:
            self._step_awaiting(now)
        else:
            self._step(port, now)

    def _step(self, port, now) -> None:
        raise NotImplementedError

    def _step_awaiting(self, now) -> None:
        kind, deadline, then = self.awaiting
        if kind == "worker" and not self.worker.is_alive():
            self.resolve()
        elif kind == "worker" and now > deadline:
            # Never let the target go while the worker may still write it.
            log.warning("%s: the local-pieces worker has not stopped for %g s; the target stays claimed",
                        self.manifest.name, now - deadline + WORKER_STOP_TIMEOUT)
            self.awaiting = (kind, now + WORKER_STOP_TIMEOUT, then)
        elif now > deadline:
            log.warning("%s: no answer from libtorrent to %s within %g s; going on", self.manifest.name, kind,
                        ALERT_TIMEOUT)
            self.resolve()

    def resolve(self) -> None:
        """Go on with the continuation of the step the job waited for."""
        _kind, _deadline, then = self.awaiting
        self.awaiting = None
        then()

    def _step_torrent(self, port, now) -> None:
        """The upkeep of a running torrent: resume data saved, missing named peers tried again."""
        if self.resume_dirty and self.resume_path:
            since = now - self.last_resume_save
            enough = self.pieces_since_save >= RESUME_SAVE_PIECES and since >= RESUME_SAVE_MIN_INTERVAL
            if since >= RESUME_SAVE_INTERVAL or enough:
                port.save(self)
        st = self.status
        if self.peers and now - self.last_peer_retry >= PEER_RETRY_INTERVAL:
            if st is None or st.num_peers < len(self.peers):
                port.connect_peers(self)
            self.last_peer_retry = now

    # -- libtorrent's news of the job's torrent (the session's alerts) ---------------------
    def on_piece_finished(self) -> None:
        self.resume_dirty = True
        self.pieces_since_save += 1

    def on_resume_saved(self, port, params) -> None:
        port.write_resume(self, params)
        self._saved()

    def on_resume_not_saved(self, message) -> None:
        log.debug("%s: resume data not saved: %s", self.manifest.name, message)
        self._saved()

    def _saved(self) -> None:
        self.saves_in_flight = max(0, self.saves_in_flight - 1)
        if self.saves_in_flight == 0 and self.waits_for("save"):
            self.resolve()

    def on_removed(self) -> None:
        if self.waits_for("remove"):
            self.resolve()

    def on_error(self, port, message) -> None:
        self.fail(port, self.named(f"{self.action} {self.manifest.name}: {message}"))

    def on_hash_failed(self, port, piece) -> None:
        """A piece failed libtorrent's check: a fetch fetches it again by itself."""

    def on_finished(self, port) -> None:
        """libtorrent has every piece."""

    def on_tracker_error(self, message) -> None:
        self.tracker_error = message

    def on_tracker_reply(self, port) -> None:
        self.tracker_error = ""

    # -- leaving -----------------------------------------------------------------------------
    def unload(self, port, final=None, error="") -> None:
        """Save resume data, take the torrent out, release the target; then the job is in
        ``final`` (or keeps its state, when the session closes and the job must resume)."""
        self.cancel.set()
        if self.stopping is not None:
            return
        self.stopping = final or self.state

        def done():
            self.handle = None
            self.status = None
            self.release_claims()
            self.stopping = None
            if self.state == LOCAL:
                self.worker_result = None  # a result that came too late joins no swarm
            if final:
                self.set_state(final, error)
            port.record(self)

        if self.state == LOCAL and self.worker is not None and self.worker.is_alive():
            # It writes into the target: the claim is released once it has stopped.
            self.awaiting = ("worker", time.monotonic() + WORKER_STOP_TIMEOUT, done)
        elif self.handle is None:
            done()
        elif self.resume_path:
            port.save(self, flush=True, then=lambda: port.remove(self, done))
        else:
            port.remove(self, done)

    def stop(self, port) -> None:
        if self.state not in FINAL:
            self.unload(port, STOPPED)

    def fail(self, port, message, reason=None) -> None:
        """``reason``: a short form of ``message`` for the trackers (default ``message``)."""
        log.error("%s", message)
        if self.state in FINAL:
            return
        self.error = message
        self._tell_trackers(port, reason or message)
        self.unload(port, FAILED, message)

    def _tell_trackers(self, port, reason) -> None:
        """Tell the trackers why the job failed, where libtorrent's own stop says nothing."""

    def broke(self, port, exc) -> None:
        """A move raised: the job fails alone, with the reason, and lets its target go."""
        message = self.named(str(exc) if isinstance(exc, P2PFleetError)
                             else f"{self.path}: {self.action} failed ({type(exc).__name__}: {exc})")
        self.awaiting = None
        self.stopping = None
        self.cancel.set()
        port.drop(self)
        self.set_state(FAILED, message)
        if self.worker is not None and self.worker.is_alive():
            # It writes the target through its own descriptor: the claim is let go only
            # once it has stopped, or the device could be mounted or claimed under it.
            self.stopping = FAILED
            self.awaiting = ("worker", time.monotonic() + WORKER_STOP_TIMEOUT, lambda: self._let_go(port))
        else:
            self.release_claims()
        port.record(self)

    def _let_go(self, port) -> None:
        self.stopping = None
        self.release_claims()
        port.record(self)


class _FdClaim:
    """A seed's open descriptor on its image, held for the job's life."""

    def __init__(self, fd):
        self.fd = fd

    def release(self):
        if self.fd is not None:
            retire_fd(self.fd)
            self.fd = None


class SeedJob(Job):
    """checking → seeding: serve an image (or a verified slot) to the swarm."""

    action = "seed"

    def __init__(self, manifest, path, trackers=(), peers=(), super_seeding=False):
        super().__init__(manifest, path, trackers, peers, seed_after=True)
        self.super_seeding = super_seeding
        self.state = CHECKING

    def record(self) -> dict:
        return dict(super().record(), super_seeding=self.super_seeding)

    def start(self, port) -> None:
        """Seed without hashing first: libtorrent's seed mode checks each piece the first
        time a peer asks for it, so a wrong image never sends a wrong byte."""
        fd, info = open_source(self.path)
        claims = [_FdClaim(fd)]
        try:
            if info.size < self.manifest.image_size:
                raise ManifestError(f"{self.path}: holds {info.size} bytes but manifest {self.manifest.name} "
                                    f"describes {self.manifest.image_size}")
            if self.manifest.source.get("fingerprint") != _fingerprint_or_none(held_path(fd)):
                verify.spot_check(self.manifest, fd, self.path)
            slices = SliceMap(self.path, self.manifest.files, read_only=True, io_path=held_path(fd))
            claims.append(slices)
            self.paths = slices.paths
            self.claims = claims
            port.add(self, seed_mode=True, super_seeding=self.super_seeding)
        except BaseException:
            for claim in claims:
                claim.release()
            self.claims = []
            raise
        self.error = ""
        self.set_state(CHECKING)

    def _step(self, port, now) -> None:
        if self.handle is None or self.stopping is not None:
            return
        self._step_torrent(port, now)
        if self.state == CHECKING and self.status is not None and self.status.is_seeding:
            self.set_state(SEEDING)
            port.record(self)

    def on_hash_failed(self, port, piece) -> None:
        why = (f"piece {piece} does not match manifest {self.manifest.name}; "
               "the image changed after its manifest was made")
        self.fail(port, f"{self.path}: {why}", reason=why)

    def _tell_trackers(self, port, reason) -> None:
        # Before libtorrent's own event=stopped: the tracker marks this peer failed, with why.
        # Once per job: more hash failures can arrive while the torrent is being removed.
        if self.trackers and self.stopping is None:
            port.report_failure(self, f"seed failed: {reason}")


class FetchJob(Job):
    """Fetch an image into a target, the whole way: read it top to bottom to follow one fetch.

    ``claim`` → ``start`` (resume data, else the local phase: ``_start_local`` →
    ``_local_done``) → ``_step_download`` (stalled or not) → ``_flush`` → ``_verified``
    (the digest proves the target, or ``_refetch`` repairs the wrong pieces) → unloaded
    as ``verified``, or ``seeding`` on (``seed_after``).
    """

    action = "fetch"

    def __init__(self, manifest, path, trackers=(), peers=(), seed_after=False, stall_timeout=300.0,
                 require_device=False, local_pieces=True, check_target="auto"):
        super().__init__(manifest, path, trackers, peers, seed_after)
        self.stall_timeout = stall_timeout
        self.require_device = require_device
        self.local_pieces = local_pieces
        self.check_target = check_target

    def record(self) -> dict:
        return dict(super().record(), stall_timeout=self.stall_timeout, require_device=self.require_device,
                    local_pieces=self.local_pieces, check_target=self.check_target)

    # -- claimed: the target is checked and held -------------------------------------------
    def claim(self, guard, state_dir, protect=()) -> Target:
        """Claim the target (``claim_fetch_target``)."""
        return claim_fetch_target(self.manifest, self.path, state_dir, self.require_device, guard, protect)

    def start(self, port, claim, resuming=False) -> None:
        """Start over the claimed target, resuming where it was. Every access goes through
        the claim (``io_path``): the device checked, whatever its name means later. A
        recorded job (``resuming``) goes on only on the very target it was writing: same
        device, partition, disk and backing file."""
        self.resume_path = port.store.resume_path(self.id)
        if resuming:
            changed = ident.difference(self.identity, claim.identity)
            if changed:
                raise TargetRefused(f"{self.path}: is not the target this job was writing ({changed}); nothing "
                                    f"was written: put the job again to start over on what {self.path} is now")
        # From now on the slot is being written: its ledger must not call it clean, even
        # when this job stops or crashes halfway (the local phase reads the entry first).
        target_entry = self._ledger_writing(port)
        slices = SliceMap(claim.path, self.manifest.files, read_only=False, io_path=claim.io_path)
        self.claims = [claim, slices]
        self.io_path = claim.io_path
        try:
            self.paths = slices.paths
            identity = claim.identity
            resumed = port.load_resume(self, identity)
            self.identity = identity
            self.resumed_bytes = _bytes_in(self.manifest, resumed.have_pieces) if resumed is not None else 0
            if resumed is None and self.local_pieces and port.ledger is not None:
                self._start_local(port, identity, target_entry)
                return
            port.add(self, resume=resumed)
        except BaseException:
            slices.release()
            self.claims = []
            raise
        self.error = ""
        self.cancel.clear()
        self.set_state(DOWNLOADING)

    def _ledger_writing(self, port):
        """The target's ledger entry as it was, now marked changed (or removed, when it
        cannot be marked); None without one. A ledger that cannot be written costs the
        local phase's knowledge, never the fetch."""
        ledger = port.ledger
        if ledger is None:
            return None
        try:
            ledger.note_in_use()
            entry = ledger.entry(self.path)
            ledger.mark_changed(self.path, f"written by the fetch of {self.manifest.name}")
            return entry
        except StateError as exc:
            log.error("slot ledger: %s", exc)
            self.warning = f"slot ledger not updated: {exc}"
            ledger.forget(self.path)
            return None

    # -- local: the pieces this host already holds (delta) ---------------------------------
    def _start_local(self, port, identity, target_entry) -> None:
        """Look for the image's pieces on this host's own disks, in a worker thread; the
        loop joins the swarm with them when it is done (``_local_done``)."""
        try:
            sources = [entry for entry in port.ledger.entries() if self._usable_source(port, entry)]
        except (StateError, OSError) as exc:
            log.error("slot ledger: %s", exc)
            sources = []
        link_rate = port.settings.link_rate

        def progress(result):
            self.local = result

        def find():
            return ("found", delta.find_local(self.manifest, self.path, identity, target_entry, sources,
                                              self.check_target, link_rate, cancel=self.cancel,
                                              progress=progress, io_path=self.io_path))

        self.error = ""
        self.local = None
        self.local_counts = {}
        self.set_state(LOCAL)
        self._in_worker("local", find)

    def _usable_source(self, port, entry) -> bool:
        """A slot to copy pieces from: not the target, not being written, still the same device."""
        if overlaps(entry.path, self.path):
            return False
        for other in port.jobs.values():
            if other.action == "fetch" and other.state in WRITING and overlaps(entry.path, other.path):
                return False
        try:
            return not ident.difference(entry.identity, ident.of_path(entry.path))
        except (OSError, P2PFleetError):
            return False

    def _step_local(self, port, now, worker_ended) -> None:
        if self.trackers and now - self.last_local_announce >= LOCAL_ANNOUNCE_INTERVAL:
            self.last_local_announce = now
            found = self.local.local_bytes if self.local is not None else 0
            port.report_local(self, self.manifest.image_size - found)
        if self.worker_result is not None:
            self._local_done(port, self.worker_result)
        elif worker_ended:
            self.fail(port, f"{self.path}: the search for local pieces ended without a result")

    def _local_done(self, port, result) -> None:
        self.worker_result = None
        if port.closing or not self.claims:
            return  # the session closes, or the job let its target go: it joins no swarm
        if result[0] == "error":
            self.fail(port, result[1])
            return
        if result[0] != "found":
            return  # cancelled: the stop that cancelled it finishes the job
        found = result[1]
        self.local = found
        self.local_counts = {"kept_bytes": found.kept_bytes, "zero_bytes": found.zero_bytes,
                             "copied_bytes": found.copied_bytes, "rejected_pieces": found.rejected_pieces,
                             "checked_bytes": found.checked_bytes}
        for note in found.notes:
            log.info("%s: %s", self.path, note)
        log.info("%s: %d of %d bytes of %s found locally (kept %d, zero %d, copied %d)", self.path,
                 found.local_bytes, self.manifest.image_size, self.manifest.name, found.kept_bytes,
                 found.zero_bytes, found.copied_bytes)
        for claim in self.claims:
            if isinstance(claim, SliceMap):
                claim.drop_caches()  # a slice's own page cache must not hide what was written
        port.add(self, have=found.have)
        self.resume_dirty = True  # the bitfield is saved at once: a restart never looks again
        self.set_state(DOWNLOADING)
        port.record(self)

    # -- downloading ⇄ stalled ----------------------------------------------------------------
    def _step(self, port, now) -> None:
        # Whether the worker ran is read before its result: a worker that ended had set it.
        worker_ended = self.worker is not None and not self.worker.is_alive()
        if self.state == LOCAL and self.stopping is None:
            self._step_local(port, now, worker_ended)
            return
        if self.handle is None or self.stopping is not None:
            return
        if now - self.last_name_check >= NAME_CHECK_INTERVAL:
            self.last_name_check = now
            renamed = self._renamed()
            if renamed:
                self.fail(port, renamed)
                return
        self._step_torrent(port, now)
        if self.state in (DOWNLOADING, STALLED) and self.status is not None:
            self._step_download(port, now)
        elif self.state == VERIFYING and self.worker_result is not None:
            self._verified(port, self.worker_result)
        elif self.state == VERIFYING and worker_ended:
            self.fail(port, f"{self.path}: the verify pass ended without a result")

    def _step_download(self, port, now) -> None:
        st = self.status
        if st.total_wanted_done != self.last_progress[0]:
            self.last_progress = (st.total_wanted_done, now)
            if self.state == STALLED:
                self.set_state(DOWNLOADING)
                port.record(self)
        elif self.state == DOWNLOADING and self.stall_timeout and now - self.last_progress[1] > self.stall_timeout:
            why = f" (tracker: {self.tracker_error})" if self.tracker_error else ""
            log.warning("%s: no progress for %g s with %d peers%s", self.manifest.name, self.stall_timeout,
                        st.num_peers, why)
            self.set_state(STALLED)
            port.record(self)
        if st.total_wanted and st.total_wanted_done >= st.total_wanted:
            self._flush(port)

    def _renamed(self, strict=False) -> str:
        """Why the target's name stopped naming the device the job holds, or ``""``."""
        for claim in self.claims:
            if isinstance(claim, Target):
                return claim.renamed(strict)
        return ""

    def on_finished(self, port) -> None:
        if self.state in (DOWNLOADING, STALLED):
            self._flush(port)

    def on_tracker_reply(self, port) -> None:
        super().on_tracker_reply(port)
        port.follow_stripe(self)

    # -- flushing → verifying → verified | repairing -------------------------------------------
    def _flush(self, port) -> None:
        if self.stopping is not None or self.awaiting or self.state not in (DOWNLOADING, STALLED):
            return  # being stopped, or already on its way: the stop's own save comes first
        # The published status may be older than the last pieces (a short fetch ends between
        # two updates): the counters of a finished download are read now.
        self.status = self.handle.status()
        self.set_state(FLUSHING)
        port.record(self)

        def flushed():
            self.set_state(VERIFYING)
            port.record(self)
            # The slot's fingerprint for its ledger entry is read there too: not on the loop.
            io_path = self.io_path
            self._start_verify(then=(lambda: slot_fingerprint(io_path)) if port.ledger else None)

        port.save(self, flush=True, then=flushed)

    def _start_verify(self, then=None) -> None:
        """Check the target in a worker thread: the loop must keep serving the swarm.
        ``then()``, run there too once the target is proved, adds its result to the answer."""
        self.verify_done = 0

        def progress(done, _total):
            if self.cancel.is_set():
                raise Cancelled()
            self.verify_done = done

        claims = list(self.claims)  # the loop may release them while this thread reads
        io_path = self.io_path

        def check():
            for claim in claims:
                if hasattr(claim, "sync"):
                    claim.sync()
            try:
                result = verify.verify_target(self.manifest, self.path, progress=progress, io_path=io_path)
            except VerifyError as exc:
                return ("wrong", verify.bad_pieces(self.manifest, self.path, progress=progress, io_path=io_path),
                        str(exc))
            return ("verified", f"{result.algorithm}:{result.value}", then() if then else None)

        self._in_worker("verify", check)

    def _verified(self, port, result) -> None:
        self.worker_result = None
        outcome = result[0]
        if outcome == "verified":
            renamed = self._renamed(strict=True)
            if renamed:
                self.fail(port, renamed)
                return
            self.digest = result[1]
            self.bad_pieces = 0
            if port.ledger is not None and self.identity:
                try:
                    port.ledger.record(self.path, self.identity, self.manifest, result[2] or {})
                except StateError as exc:
                    log.error("%s", exc)
                    self.warning = f"slot ledger not written: {exc}"
            if self.seed_after:
                self.set_state(SEEDING)
                port.record(self)
            else:
                self.unload(port, VERIFIED)
        elif outcome == "wrong":
            self._repair(port, result[1], result[2])
        elif outcome == "error":
            self.fail(port, result[1])

    def _repair(self, port, bad, why) -> None:
        if not bad:
            self.fail(port, f"{why}, yet every piece matches its SHA-1: the manifest's digest is wrong")
        elif self.repair_round >= MAX_REPAIR_ROUNDS:
            self.fail(port, f"{self.path}: still {len(bad)} wrong pieces after {MAX_REPAIR_ROUNDS} repair rounds")
        else:
            self.repair_round += 1
            self.bad_pieces = len(bad)
            log.warning("%s; %d pieces are wrong on %s, fetching them again (round %d)", why, len(bad),
                        self.path, self.repair_round)
            self.set_state(REPAIRING)
            port.record(self)
            self._refetch(port, bad)

    def _refetch(self, port, bad) -> None:
        """Mark pieces found wrong on the target as missing so the swarm sends them again."""
        have = [True] * self.manifest.piece_count
        for index in bad:
            have[index] = False

        def removed():
            # libtorrent has no call to forget a piece it believes it has; adding the
            # torrent again with a corrected bitfield is the supported way.
            port.add(self, have=have)
            self.set_state(DOWNLOADING)
            port.record(self)
            port.save(self)

        port.remove(self, removed)

    def _in_worker(self, kind, body) -> None:
        """Run ``body()`` in a thread; its answer (or why it has none) lands in ``worker_result``."""
        self.worker_result = None
        self.cancel.clear()

        def work():
            try:
                self.worker_result = body()
            except Cancelled:
                self.worker_result = ("cancelled",)
            except Exception as exc:  # any failure must reach the loop, or the job hangs
                self.worker_result = ("error", self.named(_one_line(exc, self.path)))

        self.worker = threading.Thread(target=work, name=f"p2pfleet-{kind}-{self.id[:8]}", daemon=True)
        self.worker.start()


def claim_fetch_target(manifest, path, state_dir, require_device=False, guard=None, protect=()) -> Target:
    """The one way a fetch's target is claimed, by the CLI before its session starts and by
    the session for a put or a recorded job: libtorrent's own reading of the torrent
    first (an impossible torrent never grows a target); then ``guard``'s refusals (the
    agent's: never the slot the boot environment falls back to); then every check of
    ``image.claim_target``, the manifest's own files and the state directory protected."""
    torrent_info(manifest)
    if guard is not None:
        guard(path)
    claim = claim_target(path, manifest.image_size, require_device=require_device,
                         protect=tuple(protect) + own_files(manifest), private_dirs=(state_dir,))
    if guard is not None:
        # Again on what the claim holds: a name moved between the guard and the open
        # must not slip past it.
        held = claim.io_path
        try:
            guard(held)
        except BaseException as exc:
            claim.discard()
            if isinstance(exc, TargetRefused):
                raise TargetRefused(str(exc).replace(held, path)) from None
            raise
    return claim


def _one_line(exc, path) -> str:
    if isinstance(exc, P2PFleetError):
        return str(exc)
    if isinstance(exc, OSError):
        return f"{path}: {exc.strerror or exc}"
    return f"{path}: {type(exc).__name__}: {exc}"


def _fingerprint_or_none(path):
    try:
        return fingerprint(path)
    except (OSError, P2PFleetError):
        return None


def _bytes_in(manifest, have_pieces) -> int:
    """Bytes of the image covered by the pieces marked as had."""
    count = sum(1 for had in have_pieces if had)
    if count and len(have_pieces) == manifest.piece_count and have_pieces[-1]:
        last = manifest.image_size - (manifest.piece_count - 1) * manifest.piece_size
        return (count - 1) * manifest.piece_size + last
    return count * manifest.piece_size
