"""Jobs: what one host does with one image — seed it, or fetch it into a target.

A job is a state machine. Only the session's loop thread moves it (see ``session``);
everyone else reads the ``JobSnapshot`` the loop publishes::

    fetch:  claimed → local → downloading ⇄ stalled → flushing → verifying → verified → seeding
                                  ↑                                  │
                                  └──────── repairing (round n) ←────┘  (wrong pieces found)

``local``: the pieces this host already holds are taken from its own disks (see ``delta``)
before the job joins the swarm; a job that resumes with resume data skips it.
    seed:   checking → seeding
    any:    → failed (one line says why) | stopped (asked to)

``verified``, ``failed`` and ``stopped`` hold nothing: no torrent, no claim on a target.
Every change of state is written to the job's *record* in the state directory, beside a
copy of its manifest and torrent and its resume data, so an agent that restarts (or a
host that reboots) finds its jobs again and carries on where they were.
"""
import dataclasses
import json
import logging
import os
import threading
import time

from .errors import Cancelled, P2PFleetError, StateError, VerifyError
from .files import ensure_private_dir, read_capped, write_atomic
from .metainfo import Manifest

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
RECORD_FORMAT = 1
MAX_RECORD_BYTES = 1 << 20


@dataclasses.dataclass(frozen=True)
class JobSnapshot:
    """One job as the loop last saw it. Immutable: safe to hand to any thread, JSON-ready."""

    id: str
    action: str  # "seed" or "fetch"
    name: str
    info_hash: str
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
    def fraction(self) -> float:
        return self.bytes_done / self.bytes_total if self.bytes_total else 1.0

    @property
    def final(self) -> bool:
        return self.state in FINAL

    def as_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["percent"] = round(100.0 * self.fraction, 2)
        return data


class JobStore:
    """A state directory: ``jobs/<info_hash>.{json,manifest.json,torrent,resume}`` per job.

    The manifest and torrent are copied in, so a job resumes even when the file it was
    started from was in a temporary directory that is gone after a reboot.
    """

    def __init__(self, state_dir: str):
        self.root = ensure_private_dir(state_dir, error=StateError)
        self.jobs_dir = ensure_private_dir(os.path.join(self.root, "jobs"), error=StateError)

    def path(self, info_hash: str, suffix: str) -> str:
        return os.path.join(self.jobs_dir, info_hash + suffix)

    def resume_path(self, info_hash: str) -> str:
        return self.path(info_hash, ".resume")

    def keep_manifest(self, manifest: Manifest) -> Manifest:
        """The job's own copy of ``manifest`` (written once, then reused)."""
        ih = manifest.info_hash
        copy_path = self.path(ih, ".manifest.json")
        if os.path.abspath(manifest.path or "") == copy_path:
            return manifest
        manifest.copy_to(self.jobs_dir, ih, error=StateError)
        return Manifest.load(copy_path)

    def write_record(self, record: dict) -> None:
        data = dict(record, format=RECORD_FORMAT, updated=time.time())
        write_atomic(self.path(record["info_hash"], ".json"), json.dumps(data, sort_keys=True).encode(),
                     mode=0o600, error=StateError)

    def read_record(self, info_hash: str):
        path = self.path(info_hash, ".json")
        if not os.path.exists(path):
            return None
        try:
            data = json.loads(read_capped(path, MAX_RECORD_BYTES, "job record", error=StateError))
        except (ValueError, RecursionError, StateError) as exc:
            log.warning("%s: unreadable job record ignored: %s", path, exc)
            return None
        if not isinstance(data, dict) or data.get("format") != RECORD_FORMAT or data.get("info_hash") != info_hash:
            log.warning("%s: not a job record of this version; ignored", path)
            return None
        return data

    def records(self) -> list:
        found = []
        for name in sorted(os.listdir(self.jobs_dir)):
            stem, dot, suffix = name.partition(".")
            if suffix == "json" and len(stem) == 40:
                record = self.read_record(stem)
                if record is not None:
                    found.append(record)
        return found

    def forget_record(self, info_hash: str) -> None:
        """Remove a job's record only (a job whose target could not be taken)."""
        try:
            os.unlink(self.path(info_hash, ".json"))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StateError(f"{self.path(info_hash, '.json')}: cannot remove: {exc.strerror}") from None

    def forget(self, info_hash: str) -> None:
        for suffix in (".json", ".manifest.json", ".torrent", ".resume", ".resume.rejected"):
            try:
                os.unlink(self.path(info_hash, suffix))
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise StateError(f"{self.path(info_hash, suffix)}: cannot remove: {exc.strerror}") from None


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
    """State shared by seed and fetch jobs. Moved only by the session's loop thread."""

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
        self.awaiting = None  # ("save" | "remove", deadline, then)
        self.stopping = None  # final state the job is being stopped into
        self.worker = None
        self.worker_result = None
        self.cancel = threading.Event()

    # -- what the loop asks of a job -------------------------------------------------
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
            id=self.id, action=self.action, name=self.manifest.name, info_hash=self.id, path=self.path,
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


class SeedJob(Job):
    action = "seed"

    def __init__(self, manifest, path, trackers=(), peers=(), super_seeding=False):
        super().__init__(manifest, path, trackers, peers, seed_after=True)
        self.super_seeding = super_seeding
        self.state = CHECKING

    def record(self) -> dict:
        return dict(super().record(), super_seeding=self.super_seeding)


class FetchJob(Job):
    action = "fetch"

    def __init__(self, manifest, path, trackers=(), peers=(), seed_after=False, stall_timeout=300.0,
                 require_device=False, local_sources=True, check_target="auto"):
        super().__init__(manifest, path, trackers, peers, seed_after)
        self.stall_timeout = stall_timeout
        self.require_device = require_device
        self.local_sources = local_sources
        self.check_target = check_target

    def record(self) -> dict:
        return dict(super().record(), stall_timeout=self.stall_timeout, require_device=self.require_device,
                    local_sources=self.local_sources, check_target=self.check_target)

    def start_local(self, find) -> None:
        """Take the pieces this host already holds (``find(cancel, progress)``) in a worker
        thread; the loop joins the swarm with them when it is done."""

        def progress(result):
            self.local = result

        self._in_worker("local", lambda: ("found", find(self.cancel, progress)))

    def start_verify(self, verify_module, then=None) -> None:
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
                result = verify_module.verify_target(self.manifest, self.path, progress=progress, io_path=io_path)
            except VerifyError as exc:
                return ("wrong", verify_module.bad_pieces(self.manifest, self.path, progress=progress,
                                                          io_path=io_path), str(exc))
            return ("verified", f"{result.algorithm}:{result.value}", then() if then else None)

        self._in_worker("verify", check)

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


def _one_line(exc, path) -> str:
    if isinstance(exc, P2PFleetError):
        return str(exc)
    if isinstance(exc, OSError):
        return f"{path}: {exc.strerror or exc}"
    return f"{path}: {type(exc).__name__}: {exc}"
