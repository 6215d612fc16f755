"""Job *records*: what a host's jobs were doing, kept in its state directory.

Every change of a job's state is written to its record, beside a copy of its manifest and
torrent and its resume data, so an agent that restarts (or a host that reboots) finds its
jobs again and carries on where they were. What a *slot* holds is not kept here but in
the slot ledger (``slots.Ledger``): a record says what a job did, the ledger what a slot
holds now.
"""
import json
import logging
import os
import time

from . import delta
from . import jobs as J
from .errors import StateError
from .files import ensure_private_dir, read_capped, write_atomic
from .metainfo import Manifest

log = logging.getLogger("p2pfleet.jobs")

RECORD_FORMAT = 1
MAX_RECORD_BYTES = 1 << 20


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

    def recorded_job(self, info_hash: str, record: dict):
        """The job ``record`` describes, in its recorded state, with its own manifest copy."""
        return job_from_record(Manifest.load(self.path(info_hash, ".manifest.json")), record)


def job_from_record(manifest, record):
    """A job as its record left it (raises ``KeyError``/``ValueError``/``TypeError`` for a bad one)."""
    peers = [tuple(p) for p in record.get("peers", [])]
    if record["action"] == "fetch":
        job = J.FetchJob(manifest, record["path"], record.get("trackers", []), peers,
                         bool(record.get("seed_after")), float(record.get("stall_timeout") or 0),
                         bool(record.get("require_device")),
                         bool(record.get("local_pieces", record.get("local_sources", True))),  # older records: local_sources
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


def _counter(value) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0
