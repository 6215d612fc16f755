"""The LAN swarm: one libtorrent session, its seed and fetch jobs, and their progress.

The session profile is for a closed LAN: no DHT, LSD, UPnP or NAT-PMP, no uTP (it capped
loopback transfers near 9 MiB/s and costs ~5x the CPU of TCP), peers only from the
tracker or named explicitly, and rate limits that apply to LAN peers too (libtorrent
exempts local networks from limits unless told otherwise).

Disk I/O goes through libtorrent's *posix* backend: the default backends truncate the
file they open for writing, which a block device refuses forever. Each torrent file is
mapped onto its target with ``renamed_files`` (a device path or a loop slice of it).

The session's alert loop lives in ``Swarm.pump`` and nowhere else; everything outside
reads ``Progress`` snapshots.
"""
import collections
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass

import libtorrent as lt

from .errors import ManifestError, P2PFleetError, SwarmError
from .image import SliceMap, Target, open_source
from .metainfo import fingerprint

RESUME_SAVE_INTERVAL = 2.0
RATE_WINDOW = 3.0
PEER_RETRY_INTERVAL = 5.0
USER_AGENT = "p2pfleet/0.1.0"

_STATES = {
    lt.torrent_status.checking_files: "checking",
    lt.torrent_status.checking_resume_data: "checking",
    lt.torrent_status.downloading_metadata: "downloading",
    lt.torrent_status.downloading: "downloading",
    lt.torrent_status.finished: "finished",
    lt.torrent_status.seeding: "seeding",
}


def parse_endpoint(text: str, default_host: str = "0.0.0.0") -> tuple:
    """``HOST:PORT``, ``[V6]:PORT`` or ``PORT`` → ``(host, port)``."""
    host, sep, port = str(text).rpartition(":")
    if not sep:
        host, port = default_host, text
    host = host.strip("[]") or default_host
    try:
        number = int(port)
    except ValueError:
        raise SwarmError(f"invalid endpoint {text!r}: expected HOST:PORT") from None
    if not 0 <= number <= 65535:
        raise SwarmError(f"invalid endpoint {text!r}: port out of range")
    return host, number


def lan_settings(listen: str, upload_limit: int = 0, download_limit: int = 0) -> dict:
    """The session profile for a LAN swarm (see the module docstring)."""
    host, port = parse_endpoint(listen)
    if ":" in host:
        host = f"[{host}]"
    return {
        "listen_interfaces": f"{host}:{port}",
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
        "announce_to_all_trackers": True,
        "announce_to_all_tiers": True,
        # Measured best for LAN swarms of 4-16 peers; more slots spread the origin thin.
        "unchoke_slots_limit": 8,
        "peer_connect_timeout": 5,
        "active_downloads": -1,
        "active_seeds": -1,
        "active_limit": -1,
        "upload_rate_limit": int(upload_limit),
        "download_rate_limit": int(download_limit),
        "alert_mask": (
            lt.alert_category.error | lt.alert_category.status | lt.alert_category.storage
            | lt.alert_category.tracker | lt.alert_category.piece_progress
        ),
    }


@dataclass
class Progress:
    """A snapshot of one job, safe to hand to anything (JSON-ready via ``as_dict``)."""

    info_hash: str
    name: str
    kind: str
    state: str
    bytes_done: int
    bytes_total: int
    download_rate: int
    upload_rate: int
    peers: int
    seeds: int
    uploaded: int
    downloaded: int
    eta: float = None
    error: str = ""

    @property
    def fraction(self) -> float:
        return self.bytes_done / self.bytes_total if self.bytes_total else 1.0

    @property
    def complete(self) -> bool:
        return self.bytes_done >= self.bytes_total and not self.error

    def as_dict(self) -> dict:
        data = asdict(self)
        data["percent"] = round(100.0 * self.fraction, 2)
        return data


class Job:
    """One torrent in the swarm: a seed job (image → peers) or a fetch job (peers → target)."""

    def __init__(self, kind, manifest, handle, paths, holders, peers, resume_path=None):
        self.kind = kind
        self.manifest = manifest
        self.handle = handle
        self.paths = list(paths)
        self.peers = list(peers)
        self.resume_path = resume_path
        self.resumed_bytes = 0
        self.error = ""
        self.tracker_error = ""
        self._holders = holders
        self._resume_dirty = False
        self._last_resume_save = 0.0
        self._last_peer_retry = 0.0
        self._samples = collections.deque()

    def _rates(self, st) -> tuple:
        """Payload rates over the last few seconds, from byte counters.

        libtorrent's own rates move only on its one-second tick and read 0 for most of a
        short LAN transfer; counters sampled at every snapshot show what really happens.
        """
        now = time.monotonic()
        self._samples.append((now, st.total_payload_download, st.total_payload_upload))
        while len(self._samples) > 2 and now - self._samples[1][0] >= RATE_WINDOW:
            self._samples.popleft()
        t0, down0, up0 = self._samples[0]
        if now - t0 < 0.2:
            return st.download_payload_rate, st.upload_payload_rate
        return int((st.total_payload_download - down0) / (now - t0)), int((st.total_payload_upload - up0) / (now - t0))

    def snapshot(self) -> Progress:
        st = self.handle.status()
        done, total = st.total_wanted_done, st.total_wanted
        rate, up_rate = self._rates(st)
        state = "error" if self.error else _STATES.get(st.state, str(st.state))
        if self.kind == "fetch" and done >= total and state != "error":
            state = "complete"
        return Progress(
            info_hash=self.manifest.info_hash,
            name=self.manifest.name,
            kind=self.kind,
            state=state,
            bytes_done=done,
            bytes_total=total,
            download_rate=rate,
            upload_rate=up_rate,
            peers=st.num_peers,
            seeds=st.num_seeds,
            uploaded=st.total_payload_upload,
            downloaded=st.total_payload_download,
            eta=(total - done) / rate if rate > 0 and done < total else None,
            error=self.error,
        )

    def connect_peers(self) -> None:
        for host, port in self.peers:
            self.handle.connect_peer((host, port))
        self._last_peer_retry = time.monotonic()

    def save_resume(self) -> None:
        """Ask libtorrent for resume data; ``Swarm.pump`` writes it when it arrives."""
        if self.resume_path:
            self.handle.save_resume_data(lt.torrent_handle.only_if_modified)
            self._resume_dirty = False
            self._last_resume_save = time.monotonic()

    def _write_resume(self, params) -> None:
        data = lt.write_resume_data_buf(params)
        tmp = self.resume_path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.resume_path)

    def sync(self) -> None:
        """Make everything this job wrote visible and durable on its target."""
        for holder in self._holders:
            if hasattr(holder, "sync"):
                holder.sync()

    def release(self) -> None:
        for holder in self._holders:
            holder.release()
        self._holders = []


class Swarm:
    """A libtorrent session for one host. Not thread-safe: one thread drives ``pump``."""

    def __init__(self, listen: str = "0.0.0.0:6881", upload_limit: int = 0, download_limit: int = 0):
        params = lt.session_params(lan_settings(listen, upload_limit, download_limit))
        params.disk_io_constructor = "posix_disk_io_constructor"
        self.session = lt.session(params)
        # Local-network peers normally bypass rate limits; a lab admin limiting a job
        # means the LAN, so every address goes to the global (limited) peer class.
        everyone = lt.ip_filter()
        everyone.add_rule("0.0.0.0", "255.255.255.255", 1 << lt.session.global_peer_class_id)
        everyone.add_rule("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 1 << lt.session.global_peer_class_id)
        self.session.set_peer_class_filter(everyone)
        self.jobs = {}
        self._wait_listening()

    def _wait_listening(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for alert in self.session.pop_alerts():
                if isinstance(alert, lt.listen_failed_alert):
                    raise SwarmError(f"cannot listen on {alert.address}:{alert.port}: {alert.message()}")
                if isinstance(alert, lt.listen_succeeded_alert):
                    return
            self.session.wait_for_alert(100)
        raise SwarmError("libtorrent did not start listening within 5 s")

    @property
    def listen_port(self) -> int:
        return self.session.listen_port()

    def _torrent_info(self, manifest):
        try:
            return lt.torrent_info(lt.bdecode(manifest.torrent_bytes()))
        except RuntimeError as exc:
            raise ManifestError(f"{manifest.torrent_path}: libtorrent rejects the torrent: {exc}") from None

    def _params(self, manifest, paths, trackers):
        atp = lt.add_torrent_params()
        atp.ti = self._torrent_info(manifest)
        atp.save_path = "/"
        atp.renamed_files = {i: p for i, p in enumerate(paths)}
        atp.trackers = list(trackers)
        atp.flags = (atp.flags & ~lt.torrent_flags.auto_managed & ~lt.torrent_flags.paused)
        return atp

    def _check_new(self, manifest):
        if manifest.info_hash in self.jobs:
            raise SwarmError(f"a job for {manifest.name} ({manifest.info_hash}) is already running")

    def seed(self, manifest, image_path: str, trackers=(), peers=(), super_seeding=False) -> Job:
        """Seed an image that holds the manifest's bytes, without re-hashing it first.

        libtorrent's seed mode checks each piece the first time a peer asks for it, so a
        source that does not match the manifest can never send a wrong byte; the sample
        check here turns the common mistake (wrong image) into an error at start.
        """
        self._check_new(manifest)
        fd, info = open_source(image_path)
        holders = [_FdHolder(fd)]
        try:
            if info.size < manifest.image_size:
                raise ManifestError(
                    f"{image_path}: holds {info.size} bytes but manifest {manifest.name} "
                    f"describes {manifest.image_size}"
                )
            if manifest.source.get("fingerprint") != _fingerprint_or_none(image_path):
                _spot_check(manifest, fd, image_path)
            slices = SliceMap(image_path, manifest.files, read_only=True)
            holders.append(slices)
            atp = self._params(manifest, slices.paths, trackers)
            atp.flags |= lt.torrent_flags.seed_mode | lt.torrent_flags.no_verify_files
            if super_seeding:
                atp.flags |= lt.torrent_flags.super_seeding
            handle = self.session.add_torrent(atp)
        except BaseException:
            for holder in holders:
                holder.release()
            raise
        job = Job("seed", manifest, handle, slices.paths, holders, peers)
        self.jobs[manifest.info_hash] = job
        job.connect_peers()
        return job

    def fetch(self, manifest, target: Target, state_dir: str, trackers=(), peers=()) -> Job:
        """Download the image straight into a claimed target; resume from state_dir."""
        self._check_new(manifest)
        if target.info.size < manifest.image_size:
            raise SwarmError(f"{target.path}: too small for {manifest.name}")
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        resume_path = os.path.join(state_dir, manifest.info_hash + ".resume")
        identity_path = os.path.join(state_dir, manifest.info_hash + ".target.json")
        # A device node's inode changes at every boot; its number and size do not, so
        # resume data survives a terminal's reboot mid-download.
        identity = {"path": target.path, "kind": target.info.kind, "dev": target.info.dev,
                    "ino": 0 if target.info.is_device else target.info.ino, "size": target.info.size}
        slices = SliceMap(target.path, manifest.files, read_only=False)
        try:
            atp = self._params(manifest, slices.paths, trackers)
            resumed = _load_resume(resume_path, identity_path, identity)
            resumed_bytes = _bytes_in(manifest, resumed.have_pieces) if resumed is not None else 0
            if resumed is not None:
                resumed.ti, resumed.save_path = atp.ti, atp.save_path
                resumed.renamed_files, resumed.trackers = atp.renamed_files, atp.trackers
                resumed.flags = atp.flags
                atp = resumed
            else:
                _write_json(identity_path, identity)
            # A device reports size 0 to libtorrent, which would throw the resume data
            # away (or, forced to recheck, forget every piece). Integrity is ours: the
            # final digest and per-piece check in verify.
            atp.flags |= lt.torrent_flags.no_verify_files
            handle = self.session.add_torrent(atp)
        except BaseException:
            slices.release()
            raise
        job = Job("fetch", manifest, handle, slices.paths, [slices], peers, resume_path)
        job.resumed_bytes = resumed_bytes
        self.jobs[manifest.info_hash] = job
        job.connect_peers()
        return job

    def refetch_pieces(self, job: Job, bad: list) -> None:
        """Mark pieces found bad on the target as missing so the swarm sends them again."""
        have = [True] * job.manifest.piece_count
        for index in bad:
            have[index] = False
        # libtorrent has no public call to forget a piece it believes it has; re-adding
        # the torrent with a corrected bitfield is the supported way.
        atp = self._params(job.manifest, job.paths, [t.url for t in job.handle.trackers()])
        atp.have_pieces = have
        atp.flags |= lt.torrent_flags.no_verify_files
        self.session.remove_torrent(job.handle)
        self._drain_removed(job.handle)
        job.handle = self.session.add_torrent(atp)
        job.error = ""
        job.connect_peers()
        job.save_resume()

    def _drain_removed(self, handle, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.session.wait_for_alert(100)
            for alert in self.session.pop_alerts():
                if isinstance(alert, lt.torrent_removed_alert):
                    return
                self._dispatch(alert)

    def pump(self, timeout: float = 0.5) -> None:
        """Handle pending alerts (waiting up to ``timeout`` s for one) and housekeeping."""
        self.session.wait_for_alert(int(timeout * 1000))
        for alert in self.session.pop_alerts():
            self._dispatch(alert)
        now = time.monotonic()
        for job in self.jobs.values():
            if job._resume_dirty and now - job._last_resume_save >= RESUME_SAVE_INTERVAL:
                job.save_resume()
            if job.peers and now - job._last_peer_retry >= PEER_RETRY_INTERVAL:
                if job.handle.status().num_peers < len(job.peers):
                    job.connect_peers()
                else:
                    job._last_peer_retry = now

    def _job_for(self, alert):
        handle = getattr(alert, "handle", None)
        if handle is None or not handle.is_valid():
            return None
        key = str(handle.info_hashes().v1)
        return self.jobs.get(key)

    def _dispatch(self, alert) -> None:
        job = self._job_for(alert)
        if job is None:
            return
        if isinstance(alert, lt.save_resume_data_alert):
            if job.resume_path:
                job._write_resume(alert.params)
        elif isinstance(alert, lt.piece_finished_alert):
            job._resume_dirty = True
        elif isinstance(alert, (lt.file_error_alert, lt.torrent_error_alert)):
            job.error = alert.message()
        elif isinstance(alert, lt.tracker_error_alert):
            job.tracker_error = alert.message()
        elif isinstance(alert, lt.tracker_reply_alert):
            job.tracker_error = ""

    def remove(self, job: Job) -> None:
        """Stop a job, saving its resume data first, and release its target."""
        if job.resume_path and job.handle.is_valid():
            job.handle.save_resume_data(lt.torrent_handle.flush_disk_cache)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                self.session.wait_for_alert(100)
                saved = False
                for alert in self.session.pop_alerts():
                    self._dispatch(alert)
                    if isinstance(alert, (lt.save_resume_data_alert, lt.save_resume_data_failed_alert)):
                        saved = True
                if saved:
                    break
        if job.handle.is_valid():
            self.session.remove_torrent(job.handle)
            self._drain_removed(job.handle)
        self.jobs.pop(job.manifest.info_hash, None)
        job.release()

    def close(self) -> None:
        for job in list(self.jobs.values()):
            self.remove(job)
        self.session.pause()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _FdHolder:
    def __init__(self, fd):
        self.fd = fd

    def release(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _fingerprint_or_none(path):
    try:
        return fingerprint(path)
    except (OSError, P2PFleetError):
        return None


def _spot_check(manifest, fd, path, samples: int = 8) -> None:
    """Compare a few pieces (first, last and spread between) with the torrent's SHA-1s."""
    hashes = manifest.piece_hashes()
    count = manifest.piece_count
    picks = sorted({0, count - 1, *range(0, count, max(1, count // samples))})
    for index in picks:
        offset = index * manifest.piece_size
        length = min(manifest.piece_size, manifest.image_size - offset)
        if hashlib.sha1(os.pread(fd, length, offset)).digest() != hashes[index]:
            raise ManifestError(
                f"{path}: does not hold the image of manifest {manifest.name} (piece {index} differs)"
            )


def _bytes_in(manifest, have_pieces) -> int:
    """Bytes of the image covered by the pieces marked as had."""
    count = sum(1 for had in have_pieces if had)
    if count and len(have_pieces) == manifest.piece_count and have_pieces[-1]:
        last = manifest.image_size - (manifest.piece_count - 1) * manifest.piece_size
        return (count - 1) * manifest.piece_size + last
    return count * manifest.piece_size


def _load_resume(resume_path, identity_path, identity):
    """Resume data written for this very target, or None (and stale files removed)."""
    try:
        with open(identity_path, encoding="utf-8") as f:
            same_target = json.load(f) == identity
        with open(resume_path, "rb") as f:
            data = f.read()
    except (OSError, ValueError):
        same_target, data = False, b""
    if same_target and data:
        try:
            return lt.read_resume_data(data)
        except RuntimeError:
            pass
    for stale in (resume_path, identity_path):
        if os.path.exists(stale):
            os.unlink(stale)
    return None


def _write_json(path, data):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f)
    os.replace(tmp, path)

