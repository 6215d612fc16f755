"""The jobs of one host: which exist, which a put may start, which are taken up again.

The session's loop thread is the only caller. A put that names an existing job again
returns it unchanged; one that clashes with a job of the same image, or whose target
overlaps another job's, is refused with one line; a fetch claims its target (every check
of ``image.claim_target``, and the agent's guard) before a byte is written. A host that
restarts takes its recorded jobs up again, newest first, and never lets an older job
write a target a newer one has claimed since.
"""
import logging
import os
import time

from . import identity as ident
from . import jobs as J
from .errors import JobConflict, P2PFleetError, StateError
from .image import Target, overlaps
from .torrents import own_files, torrent_info

log = logging.getLogger("p2pfleet.session")


class HostJobs:
    """``jobs``: the session's table of jobs by info hash; ``port``: what a job's moves may
    ask (``torrents.Port``); ``guard(path)``: raises ``TargetRefused`` for a target this
    host must never write (the agent's: the slot the boot environment falls back to)."""

    def __init__(self, jobs, port, store, ledger, guard):
        self.jobs = jobs
        self.port = port
        self.store = store
        self.ledger = ledger
        self.guard = guard

    def _existing(self, manifest, action, path):
        """The job this put names again, or None; a clash is refused."""
        job = self.jobs.get(manifest.info_hash)
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
        for job in self.jobs.values():
            if job.id == manifest.info_hash or job.state in J.FINAL:
                continue
            if action == "seed" and job.action == "seed":
                continue  # two seeds may read one device
            if overlaps(path, job.path):
                what = "image seeded" if job.action == "seed" else "target written"
                raise JobConflict(f"{path}: overlaps {job.path}, the {what} by the {job.action} job of "
                                  f"{job.manifest.name}; one host's jobs never share a target")

    def put_seed(self, manifest, path, trackers, peers, super_seeding, dry_run=False):
        job = self._existing(manifest, "seed", path)
        if job is not None and job.state in J.RUNNING:
            return job.snapshot(time.monotonic()), False
        self._refuse_overlap(manifest, path, "seed")
        if dry_run:
            return _snapshot(job), True
        if self.store is not None:
            manifest = self.store.keep_manifest(manifest)
        job = J.SeedJob(manifest, path, trackers, peers, super_seeding)
        job.start(self.port)
        self.jobs[job.id] = job
        self.port.record(job)
        return job.snapshot(time.monotonic()), True

    def put_fetch(self, manifest, target, trackers, peers, seed_after, stall_timeout, require_device,
                  local_pieces=True, check_target="auto", dry_run=False):
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
            if dry_run:
                if claimed:
                    claimed.release()
                return _snapshot(job), True
            protect = own_files(manifest)
            manifest = self.store.keep_manifest(manifest)
            job = J.FetchJob(manifest, path, trackers, peers, seed_after, stall_timeout, require_device,
                             local_pieces, check_target)
            claim = claimed or job.claim(self.guard, self.store.root, protect)
        except BaseException:
            if claimed:
                claimed.discard()
            raise
        self._take_over(job, claim)
        try:
            job.start(self.port, claim)
        except BaseException:
            claim.discard()
            previous = self.jobs.get(job.id)
            if previous is not None:
                self.port.record(previous)
            else:
                self.store.forget_record(job.id)
            raise
        self.jobs[job.id] = job
        self.port.record(job)
        return job.snapshot(time.monotonic()), True

    def _take_over(self, job, claim) -> None:
        """Before a byte is written: no older job of the target may ever take it up again,
        and a crash from here on finds this job's record. Resume data of an earlier job of
        this image on another target is never loaded here."""
        previous = self.store.read_record(job.id)
        changed = ident.difference(previous.get("identity"), claim.identity) if previous else ""
        if changed and os.path.exists(self.store.resume_path(job.id)):
            job.warning = (f"resume data in {self.store.resume_path(job.id)} was written for another target than "
                           f"{job.path} ({changed}); starting from zero")
            log.warning("%s", job.warning)
            self.port.set_aside(self.store.resume_path(job.id))
        for other in self.jobs.values():
            # What another finished fetch verified or left there is gone: it is superseded
            # and never writes again unless it is put again.
            if other.id == job.id or other.action != "fetch" or other.state not in J.FINAL:
                continue
            if overlaps(other.path, job.path):
                other.set_state(J.STOPPED, f"superseded: {job.path} is written by the fetch of {job.manifest.name}")
                self.port.record(other)
        job.identity = claim.identity
        self.port.record(job)

    def stop(self, job_id) -> None:
        job = self.jobs.get(job_id)
        if job is None:
            raise JobConflict(f"no job {job_id} on this host")
        job.stop(self.port)

    def forget(self, job_id) -> None:
        job = self.jobs.get(job_id)
        if job is not None and job.handle is None and job.stopping is None:
            del self.jobs[job_id]
            if self.store is not None:
                self.store.forget(job_id)

    def resume_recorded(self) -> list:
        """Take up the recorded jobs, newest first. A running fetch goes on only when nothing
        newer claimed its target since (a newer job's record, or a newer verified image in
        the slot ledger) and its target is the very one it was writing; otherwise it is
        recorded failed or superseded and never writes again unless it is put again."""
        resumed, newer = [], []
        for record in sorted(self.store.records(), key=lambda r: r.get("updated") or 0, reverse=True):
            ih = record["info_hash"]
            if ih in self.jobs:
                continue
            try:
                job = self.store.recorded_job(ih, record)
            except (P2PFleetError, KeyError, TypeError, ValueError, OSError) as exc:
                log.error("job %s: record cannot be taken up: %s", ih, exc)
                continue
            self.jobs[ih] = job
            if job.state in J.RUNNING:
                why = self._superseded(job, record, newer) if job.action == "fetch" else ""
                if why:
                    log.warning("job %s (%s on %s) not resumed: %s", ih[:12], job.action, job.path, why)
                    job.set_state(J.STOPPED, why)
                    self.port.record(job)
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
                claim = job.claim(self.guard, self.store.root)
                try:
                    job.start(self.port, claim, resuming=True)
                except BaseException:
                    claim.release()
                    raise
            else:
                job.start(self.port)
            log.info("resumed %s job of %s on %s", job.action, job.manifest.name, job.path)
        except (P2PFleetError, OSError, ValueError, TypeError, RuntimeError) as exc:
            # Recorded failed: a job that could not take its target up never comes back by
            # itself (its target may hold a newer image by then); putting it again does.
            log.error("job %s (%s on %s) cannot resume: %s", job.id[:12], job.action, job.path, exc)
            job.release_claims()
            job.handle = None
            job.set_state(J.FAILED, f"cannot resume: {exc}")
        self.port.record(job)


def _snapshot(job):
    return job.snapshot(time.monotonic()) if job is not None else None
