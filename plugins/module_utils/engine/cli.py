"""``p2pfleet``: the engine on the command line, for admins debugging and for the daemons.

Every command prints one clear ``p2pfleet: error: …`` line and exits non-zero on failure.
Progress is a bar on a terminal, plain lines otherwise, JSON lines with ``--json``.
"""
import argparse
import json
import logging
import os
import signal
import sys
import time

from . import jobs, metainfo, verify
from .errors import P2PFleetError, SessionError, StateError
from .files import ensure_private_dir
from .jobs import claim_fetch_target
from .net import parse_peer
from .records import JobStore
from .session import Session, SessionSettings

DEFAULT_STATE_DIR = "/var/lib/p2pfleet/state" if os.geteuid() == 0 else os.path.expanduser("~/.local/state/p2pfleet")


class Interrupted(Exception):
    pass


def _on_signal(signum, _frame):
    raise Interrupted(signal.Signals(signum).name)


def _mib(n) -> str:
    return f"{n / (1 << 20):,.1f} MiB"


class Reporter:
    """Shows progress: a redrawn bar on a terminal, a line per interval otherwise."""

    def __init__(self, stream=None, as_json=False, interval=None):
        self.stream = stream or sys.stderr
        self.as_json = as_json
        self.tty = self.stream.isatty() and not as_json
        self.interval = interval if interval is not None else (0.2 if self.tty else 5.0)
        self._last = 0.0
        self._open = False

    def _due(self, force):
        now = time.monotonic()
        if force or now - self._last >= self.interval:
            self._last = now
            return True
        return False

    def bytes(self, label, done, total, force=False):
        if not self._due(force or done >= total):
            return
        if self.as_json:
            self._line(json.dumps({"event": label, "bytes_done": done, "bytes_total": total}))
        else:
            self._show(f"{label}: {self._bar(done, total)} {_mib(done)} / {_mib(total)}", done >= total)

    def job(self, progress, force=False):
        if not self._due(force):
            return
        if self.as_json:
            self._line(json.dumps({"event": "progress", **progress.as_dict()}))
            return
        eta = f" ETA {int(progress.eta) // 60}:{int(progress.eta) % 60:02d}" if progress.eta else ""
        self._show(
            f"{progress.action} {progress.name}: {self._bar(progress.bytes_done, progress.bytes_total)} "
            f"{progress.state} ↓ {_mib(progress.download_rate)}/s ↑ {_mib(progress.upload_rate)}/s "
            f"peers {progress.peers}{eta}",
            False,
        )

    def message(self, text):
        self.end()
        self._line(json.dumps({"event": "message", "text": text}) if self.as_json else text)

    def end(self):
        if self.tty and self._open:
            self.stream.write("\n")
            self._open = False

    @staticmethod
    def _bar(done, total, width=30):
        frac = done / total if total else 1.0
        fill = int(frac * width)
        return f"[{'#' * fill}{'.' * (width - fill)}] {100 * frac:5.1f}%"

    def _show(self, text, final):
        if self.tty:
            self.stream.write("\r" + text + "\x1b[K")
            self._open = True
            if final:
                self.end()
            self.stream.flush()
        else:
            self._line(text)

    def _line(self, text):
        self.stream.write(text + "\n")
        self.stream.flush()


def _result(args, data):
    """The command's outcome on stdout: JSON with --json, ``key: value`` lines otherwise."""
    # A command's output, never a module's (ansible-test's pylint holds module_utils to modules' rules).
    if args.json:
        print(json.dumps(data, sort_keys=True))  # pylint: disable=ansible-bad-function
    else:
        for key, value in data.items():
            print(f"{key}: {value}")  # pylint: disable=ansible-bad-function


def cmd_manifest(args) -> int:
    rep = Reporter(as_json=args.json)
    started = time.monotonic()
    manifest, changed = metainfo.create_manifest(
        args.image, args.out, name=args.name,
        piece_size=metainfo.parse_size(args.piece_size) if args.piece_size else None,
        split_size=metainfo.parse_size(args.split_size) if args.split_size else None,
        force=args.force,
        progress=lambda d, t: rep.bytes("hashing", d, t),
    )
    rep.end()
    seconds = time.monotonic() - started
    _result(args, {
        "manifest": manifest.path, "torrent": manifest.torrent_path, "info_hash": manifest.info_hash,
        "image_size": manifest.image_size, "piece_size": manifest.piece_size,
        "piece_count": manifest.piece_count, "files": len(manifest.files),
        "digest": f"{manifest.digest_algorithm}:{manifest.digest}", "changed": changed,
        "seconds": round(seconds, 3),
    })
    return 0


def _endpoints(values):
    return [parse_peer(v, error=SessionError) for v in values or []]


def _settings(args) -> SessionSettings:
    settings = SessionSettings(listen=args.listen, upload_limit=args.upload_limit,
                               download_limit=getattr(args, "download_limit", 0))
    if getattr(args, "link_rate", None):
        settings.link_rate = args.link_rate
    return settings


def _follow(session, job_id, rep, until):
    """Show a job's progress until ``until(snapshot)``; returns that snapshot.

    A job that fails raises its one-line error; SIGINT/SIGTERM (``Interrupted``) stop the
    job (its resume data saved) before they propagate.
    """
    try:
        while True:
            snap = session.job(job_id)
            if snap.state == jobs.FAILED:
                raise SessionError(snap.error)
            if until(snap):
                return snap
            if snap.state == jobs.VERIFYING:
                rep.bytes("verifying", snap.verify_done, snap.bytes_total)
            else:
                rep.job(snap)
            session.wait_change(0.5)
    except Interrupted:
        rep.end()
        session.stop(job_id)
        raise


def cmd_seed(args) -> int:
    rep = Reporter(as_json=args.json, interval=args.progress_interval)
    manifest = metainfo.Manifest.load(args.manifest)
    with Session(_settings(args)) as session:
        started = time.monotonic()
        snap, _changed = session.put_seed(manifest, args.image, trackers=args.tracker or [],
                                          peers=_endpoints(args.peer), super_seeding=args.super_seed)
        _follow(session, snap.id, rep, lambda s: s.state == jobs.SEEDING)
        rep.message(f"seeding {manifest.name} ({manifest.info_hash}) on port {session.listen_port}; "
                    f"ready after {time.monotonic() - started:.3f} s")
        return _seed_until_stopped(session, snap.id, rep)


def _seed_until_stopped(session, job_id, rep) -> int:
    """Serve peers until SIGINT/SIGTERM. Stopping is how seeding ends: exit 0."""
    try:
        _follow(session, job_id, rep, lambda s: s.state != jobs.SEEDING)
    except Interrupted as exc:
        rep.message(f"stopped by {exc}; uploaded {_mib(session.job(job_id).uploaded)}")
        return 0
    raise SessionError(f"seeding stopped unexpectedly: {session.job(job_id).state}")


def _session_for(target, args):
    """The fetch's session; if it cannot start, a target file this run created is removed."""
    try:
        return Session(_settings(args), JobStore(args.state_dir))
    except P2PFleetError:
        target.discard()
        raise


def cmd_fetch(args) -> int:
    if not args.tracker and not args.peer:
        raise SessionError("fetch needs --tracker URL or at least one --peer HOST:PORT")
    rep = Reporter(as_json=args.json, interval=args.progress_interval)
    manifest = metainfo.Manifest.load(args.manifest)
    peers = _endpoints(args.peer)
    ensure_private_dir(args.state_dir, error=StateError)
    started = time.monotonic()
    # Claimed before the session starts: a dangerous target is refused whatever else is wrong.
    target = claim_fetch_target(manifest, args.target, args.state_dir, require_device=args.device)
    with _session_for(target, args) as session:
        snap, _changed = session.put_fetch(manifest, target, trackers=args.tracker or [], peers=peers,
                                           seed_after=args.keep_seeding, stall_timeout=args.stall_timeout,
                                           local_pieces=not args.no_local, check_target=args.check_target)
        job_id = snap.id
        if snap.warning:
            rep.message(f"warning: {snap.warning}")
        done = {jobs.VERIFIED, jobs.SEEDING, jobs.STALLED, jobs.STOPPED}  # STOPPED: by someone else
        repairs = 0
        while True:
            snap = _follow(session, job_id, rep, lambda s: s.state in done or s.repair_round > repairs)
            if snap.state not in done:
                repairs = snap.repair_round
                rep.message(f"{snap.bad_pieces} pieces are wrong on {snap.path}; fetching them again")
                continue
            break
        if snap.state == jobs.STOPPED:
            raise SessionError(f"the fetch of {manifest.name} was stopped before it was verified")
        if snap.state == jobs.STALLED:
            session.stop(job_id)
            why = f" (tracker: {snap.tracker_error})" if snap.tracker_error else ""
            raise SessionError(f"no progress for {args.stall_timeout:g} s with {snap.peers} peers{why}; "
                               "resume data is saved, run the same command again to continue")
        rep.job(snap, force=True)
        rep.end()
        _result(args, {
            "target": snap.path, "info_hash": manifest.info_hash, "image_size": manifest.image_size,
            "resumed_bytes": snap.resumed_bytes, "downloaded_bytes": snap.downloaded,
            "local_bytes": snap.local_bytes, "kept_bytes": snap.kept_bytes, "zero_bytes": snap.zero_bytes,
            "copied_bytes": snap.copied_bytes, "rejected_pieces": snap.rejected_pieces,
            "uploaded_bytes": snap.uploaded, "seconds": round(time.monotonic() - started, 3),
            "digest": snap.digest, "verified": True,
        })
        sys.stdout.flush()
        if args.keep_seeding:
            rep.message(f"complete and verified; seeding {manifest.name} until stopped")
            return _seed_until_stopped(session, job_id, rep)
    return 0


def cmd_verify(args) -> int:
    rep = Reporter(as_json=args.json)
    manifest = metainfo.Manifest.load(args.manifest)
    started = time.monotonic()
    check = verify.check_target(manifest, args.target, pieces=args.pieces,
                                progress=lambda d, t: rep.bytes("verifying", d, t))
    rep.end()
    if check.mismatch is not None:
        if check.pieces_error is not None:
            raise check.pieces_error
        if check.bad is not None:
            _result(args, {"target": args.target, "verified": False, "bad_pieces": len(check.bad),
                           "first_bad_pieces": check.bad[:20]})
        raise check.mismatch
    digest = check.digest
    seconds = time.monotonic() - started
    _result(args, {"target": args.target, "verified": True, "digest": f"{digest.algorithm}:{digest.value}",
                   "seconds": round(seconds, 3),
                   "mib_per_second": round(manifest.image_size / (1 << 20) / max(seconds, 1e-9), 1)})
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="p2pfleet", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="progress and results as JSON lines")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log the engine's decisions (job states, resume data, refused peers) to stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("manifest", help="hash an image into a torrent and manifest")
    p.add_argument("image", help="image file or block device")
    p.add_argument("--out", required=True, help="directory for NAME.torrent and NAME.manifest.json")
    p.add_argument("--name", help="image name (default: base name of IMAGE)")
    p.add_argument("--piece-size", help=f"power of two, 16K..64M (default: {metainfo.DEFAULT_PIECE_POLICY})")
    p.add_argument("--split-size", help="expose the image as virtual files of this size (multiple of piece size)")
    p.add_argument("--force", action="store_true", help="hash again even if the source looks unchanged")
    p.set_defaults(func=cmd_manifest)

    p = sub.add_parser("seed", help="seed an image to the swarm (runs until stopped)")
    p.add_argument("manifest")
    p.add_argument("image", help="image file or block device holding the manifest's image")
    p.add_argument("--super-seed", action="store_true", help="hand each peer distinct pieces (origin seeder)")
    _session_options(p, "0.0.0.0:6881")
    p.set_defaults(func=cmd_seed)

    _add_fetch(sub)

    p = sub.add_parser("verify", help="prove a target holds a manifest's image")
    p.add_argument("manifest")
    p.add_argument("target")
    p.add_argument("--pieces", action="store_true", help="on mismatch, list the wrong pieces")
    p.set_defaults(func=cmd_verify)

    # subcommands registered by other modules
    from .agent.cli import register as register_agent
    from .tracker.cli import register as register_tracker
    register_agent(sub)
    register_tracker(sub)
    return parser


def _session_options(p, listen_default) -> None:
    """The options of a command that runs a session: where it listens, whom it asks."""
    p.add_argument("--listen", default=listen_default, help=f"HOST:PORT to accept peers on (default {listen_default})")
    p.add_argument("--tracker", action="append", metavar="URL", help="announce URL (repeatable)")
    p.add_argument("--peer", action="append", metavar="HOST:PORT", help="connect to this peer (repeatable)")
    p.add_argument("--upload-limit", type=int, default=0, metavar="BYTES/S", help="0 = unlimited")
    p.add_argument("--progress-interval", type=float, default=None, metavar="S")


def _add_fetch(sub) -> None:
    p = sub.add_parser("fetch", help="download an image straight into a target, verify it")
    p.add_argument("manifest")
    p.add_argument("target", help="block device (partition) or image file to write")
    p.add_argument("--device", action="store_true", help="refuse unless TARGET is a block device")
    p.add_argument("--state-dir", default=DEFAULT_STATE_DIR, help=f"resume data (default {DEFAULT_STATE_DIR})")
    p.add_argument("--download-limit", type=int, default=0, metavar="BYTES/S", help="0 = unlimited")
    p.add_argument("--stall-timeout", type=float, default=300, metavar="S",
                   help="give up after this long without progress (0 = never; default 300)")
    p.add_argument("--keep-seeding", action="store_true", help="after verifying, seed until stopped")
    p.add_argument("--no-local", action="store_true",
                   help="fetch every piece from the swarm (default: take what this host's slots already hold)")
    p.add_argument("--check-target", choices=("auto", "always", "never"), default="auto",
                   help="read the target for pieces already there: auto = when no slot ledger vouches for it "
                        "and the disk reads faster than --link-rate (default auto)")
    p.add_argument("--link-rate", type=int, default=0, metavar="BYTES/S",
                   help="what the network delivers, for --check-target auto (default 125000000)")
    _session_options(p, "0.0.0.0:6882")
    p.set_defaults(func=cmd_fetch)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command not in ("agent", "tracker"):  # the daemons set up their own logging
        # Everything a user must know reaches them as progress or the error line; the log
        # is for when they ask why.
        logging.basicConfig(level=logging.INFO if args.verbose else logging.CRITICAL,
                            format="p2pfleet: %(levelname)s: %(name)s: %(message)s")
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _on_signal)
    # The command's error line: a command's output, never a module's.
    try:
        return args.func(args) or 0
    except Interrupted as exc:
        print(f"p2pfleet: stopped by {exc}", file=sys.stderr)  # pylint: disable=ansible-bad-function
        return 130
    except P2PFleetError as exc:
        print(f"p2pfleet: error: {exc}", file=sys.stderr)  # pylint: disable=ansible-bad-function
        return 1
