"""libtorrent as a host's jobs use it: the LAN profile, and the *port* a job moves through.

The profile is for a closed LAN: no DHT, LSD, UPnP or NAT-PMP, no uTP (it capped
loopback transfers near 9 MiB/s and costs ~5x the CPU of TCP), peers only from the
tracker or named explicitly, rate limits that apply to LAN peers too (libtorrent exempts
local networks from limits unless told otherwise), and an IP filter that keeps every
address outside the allowed networks from getting a byte.

Disk I/O goes through libtorrent's *posix* backend: the default backends truncate the
file they open for writing, which a block device refuses forever. Each torrent file is
mapped onto its target with ``renamed_files`` (a device path or a loop slice of it).

``Port`` is everything a job may ask of its session: add, save and take out its torrent,
write its record and resume data, tell its trackers what it cannot tell through
libtorrent. The asynchronous steps (saving resume data, taking a torrent out) leave a
continuation in the job's ``awaiting``; the session's loop resolves it when libtorrent's
alert for that very handle arrives, so one job's alert never completes another's.
"""
import functools
import logging
import operator
import os
import time

from . import stripes
from .errors import ManifestError, SessionError, StateError
from .failure_report import REPORT_TIMEOUT, report_failure, report_local_progress
from .files import read_capped, write_atomic
from .net import format_endpoint, parse_endpoint
from .runtime import libtorrent as lt

log = logging.getLogger("p2pfleet.session")

USER_AGENT = "p2pfleet/0.1.0"
# The alerts the loop reads; libtorrent posts no others.
ALERT_CATEGORIES = ("error", "status", "storage", "tracker", "piece_progress", "ip_block")
# How long an asynchronous step waits for libtorrent's answer before the job goes on.
ALERT_TIMEOUT = 15.0


def lan_settings(settings) -> dict:
    """libtorrent settings for a LAN swarm (see the module docstring); ``settings`` is the
    session's ``SessionSettings``."""
    host, port = parse_endpoint(settings.listen, error=SessionError)
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


def ip_filter(networks):
    """Block every address but the allowed networks (all allowed when none are given)."""
    flt = lt.ip_filter()
    if not networks:
        return flt
    flt.add_rule("0.0.0.0", "255.255.255.255", 1)
    flt.add_rule("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 1)
    for net in networks:
        flt.add_rule(str(net.network_address), str(net.broadcast_address), 0)
    return flt


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


class Port:
    """What a job may ask of its session. Used by the loop thread only.

    ``jobs`` is the session's own table of jobs by info hash (a job looks at the others
    to keep off their targets); ``ledger`` the slot ledger, or None without a state
    directory; ``closing`` is set once the session is closing.
    """

    def __init__(self, session, store, settings, jobs, ledger):
        self._lt = session
        self.store = store
        self.settings = settings
        self.jobs = jobs
        self.ledger = ledger
        self.closing = False
        self._reporters = []

    # -- the job's torrent -----------------------------------------------------------
    def add(self, job, have=None, resume=None, seed_mode=False, super_seeding=False) -> None:
        """Add the job's torrent over ``job.paths``: with the pieces marked in ``have``, or
        from ``resume`` (libtorrent's resume data), or as a seed."""
        atp = self._params(job)
        if resume is not None:
            resume.ti, resume.save_path = atp.ti, atp.save_path
            resume.renamed_files, resume.trackers = atp.renamed_files, atp.trackers
            resume.flags = atp.flags
            atp = resume
        if have is not None:
            atp.have_pieces = have
        if seed_mode:
            atp.flags |= lt.torrent_flags.seed_mode
        if super_seeding:
            atp.flags |= lt.torrent_flags.super_seeding
        # A device reports size 0 to libtorrent, which would throw resume data away (or,
        # forced to recheck, forget every piece). Integrity is ours: verify's digest and
        # per-piece check, and a seed's per-piece check on first request (seed mode).
        atp.flags |= lt.torrent_flags.no_verify_files
        # Every torrent starts without a stripe; its tracker's reply hands one (stripes.py).
        atp.piece_priorities = []
        job.stripe = None
        try:
            job.handle = self._lt.add_torrent(atp)
        except RuntimeError as exc:
            raise SessionError(f"libtorrent cannot add {job.manifest.name}: {exc}") from None
        job.status = None
        job.saves_in_flight = 0
        job.rates.reset()
        job.last_progress = (-1, time.monotonic())
        try:
            self.connect_peers(job)
        except (RuntimeError, TypeError) as exc:
            self._lt.remove_torrent(job.handle)
            job.handle = None
            raise SessionError(f"cannot connect to the peers of {job.manifest.name}: {exc}") from None
        self._lt.post_torrent_updates()  # the new job's first status now, not a tick later

    def _params(self, job):
        atp = lt.add_torrent_params()
        atp.ti = torrent_info(job.manifest)
        atp.save_path = "/"
        atp.renamed_files = dict(enumerate(job.paths))
        atp.trackers = list(job.trackers)
        atp.flags = atp.flags & ~lt.torrent_flags.auto_managed & ~lt.torrent_flags.paused
        return atp

    def connect_peers(self, job) -> None:
        for host, port in job.peers:
            job.handle.connect_peer((host, port))
        job.last_peer_retry = time.monotonic()

    def save(self, job, flush=False, then=None) -> None:
        """Ask for the job's resume data; ``then()`` once every save in flight is answered."""
        if job.handle is None or not job.handle.is_valid() or job.waits_for("remove"):
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

    def remove(self, job, then) -> None:
        """Take the job's torrent out of the session; ``then()`` once libtorrent says so."""
        if job.waits_for("remove"):
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

    def drop(self, job) -> None:
        """Take the job's torrent out at once, answering nobody (a job that broke)."""
        if job.handle is not None:
            try:
                if job.handle.is_valid():
                    self._lt.remove_torrent(job.handle)
            except RuntimeError:
                pass
            job.handle = None
        job.status = None

    @staticmethod
    def follow_stripe(job) -> None:
        """Ask the origin for this fetch's stripe first, as its tracker said (stripes.py)."""
        said, priorities = stripes.follow(job.handle.trackers(), job.stripe, job.manifest.piece_count)
        if priorities is not None:
            job.handle.prioritize_pieces(priorities)
            log.info("%s: origin stripe %s", job.manifest.name, said[len(stripes.PREFIX):])
        job.stripe = said

    # -- the job's files in the state directory ------------------------------------------
    def record(self, job) -> None:
        if self.store is None:
            return
        try:
            self.store.write_record(job.record())
        except StateError as exc:
            # The job goes on; losing its record only costs an automatic resume.
            log.error("%s", exc)
            job.warning = str(exc)

    def write_resume(self, job, params) -> None:
        if self.store is None or job.action != "fetch":
            return
        try:
            write_atomic(self.store.resume_path(job.id), lt.write_resume_data_buf(params), mode=0o600,
                         error=StateError)
        except StateError as exc:
            log.error("%s", exc)
            job.warning = f"resume data not saved: {exc}"
            return
        self.record(job)  # its payload counters, as of this save

    def load_resume(self, job, identity):
        """Resume data written for this very target, or None — never dropped silently."""
        path = job.resume_path
        if not os.path.exists(path):
            return None
        record = self.store.read_record(job.id)
        if record is None or record.get("identity") != identity:
            job.warning = (f"resume data in {path} was written for another target than {job.path}; "
                           "starting from zero")
            log.warning("%s", job.warning)
            self.set_aside(path)
            return None
        try:
            return lt.read_resume_data(read_capped(path, 64 << 20, "resume data", error=StateError))
        except (RuntimeError, StateError) as exc:
            job.warning = f"resume data in {path} is unusable ({exc}); starting from zero"
            log.warning("%s", job.warning)
            self.set_aside(path)
            return None

    @staticmethod
    def set_aside(path) -> None:
        """Keep rejected resume data for inspection, out of the way of the next start (a
        crash before the first new save must not find it again under the new identity)."""
        try:
            os.replace(path, path + ".rejected")
        except OSError as exc:
            log.warning("%s: cannot set aside: %s", path, exc.strerror)

    # -- what a job tells its trackers itself ---------------------------------------------
    def report_local(self, job, left) -> None:
        """A fetch in its local phase has no torrent, so no announce of libtorrent's."""
        self._reporters = [t for t in self._reporters if t.is_alive()]
        self._reporters += report_local_progress(job.trackers, job.id, self._lt.listen_port(), left,
                                                 parse_endpoint(self.settings.listen, error=SessionError)[0])

    def report_failure(self, job, reason) -> None:
        """Before libtorrent's own event=stopped: the tracker marks this peer failed, with why."""
        self._reporters = [t for t in self._reporters if t.is_alive()]
        self._reporters += report_failure(job.trackers, job.manifest.info_hash, self._lt.listen_port(), reason,
                                          parse_endpoint(self.settings.listen, error=SessionError)[0])

    def join_reporters(self) -> None:
        for thread in self._reporters:
            thread.join(REPORT_TIMEOUT)
