"""Swarm state: registered info-hashes, their peers, expiry, rates and fleet totals."""

import ipaddress
import json
import logging
import os
import random
import stat
import time

from ..errors import ManifestError
from ..failure_report import PEER_ID_PREFIX as REPORT_PEER_ID_PREFIX
from .aggregate_log import one_line
from .hostnames import HostNames
from .. import stripes
from .policy import View, choose_bridges, select_peers

log = logging.getLogger("p2pfleet.tracker")

# Rates from two announces closer than this are mostly noise from a client's event announce.
MIN_RATE_WINDOW = 1.0
# A manifest is a few hundred bytes of JSON; a megabyte is generous.
MAX_MANIFEST_BYTES = 1 << 20
# Names show up in the log, the page and the Prometheus labels.
MAX_NAME_CHARS = 255
# Sizes must fit the int64 of libtorrent and Prometheus.
MAX_IMAGE_SIZE = 2**63 - 1


class Peer:
    """One peer of one swarm. Identity (not value) equality: the policy keeps peers in sets.

    ``key`` is (address, peer id): a peer id is 20 bytes anyone can send, so the same id
    from another address is another peer and never touches this one's row.
    """

    __slots__ = (
        "key", "ip", "port", "host", "verified", "group", "origin", "site_seeder", "listening", "compact", "uploaded", "downloaded",
        "left", "up_rate", "down_rate", "first_seen", "last_seen", "state", "counted", "error",
        "_sample_time", "_sample_up", "_sample_down",
    )

    def __init__(self, key, ip, port, now):
        self.key = key
        self.uploaded = self.downloaded = self.left = 0
        self.up_rate = self.down_rate = 0.0
        self.first_seen = self.last_seen = now
        self.state = "active"
        self.error = None
        self.counted = False
        self._sample_time = None
        self._sample_up = self._sample_down = 0
        self.host = self.group = None
        self.verified = self.origin = self.site_seeder = False
        self.listening = True
        self.move(ip, port)

    def move(self, ip, port):
        self.ip, self.port = ip, port
        self.compact = ip.packed + port.to_bytes(2, "big")

    def sample(self, uploaded, downloaded, now, restarted):
        """Derive rates from the counters of consecutive announces."""
        if restarted or self._sample_time is None or uploaded < self._sample_up \
                or downloaded < self._sample_down:
            self.up_rate = self.down_rate = 0.0
            self._sample_time, self._sample_up, self._sample_down = now, uploaded, downloaded
        elif now - self._sample_time >= MIN_RATE_WINDOW:
            span = now - self._sample_time
            self.up_rate = (uploaded - self._sample_up) / span
            self.down_rate = (downloaded - self._sample_down) / span
            self._sample_time, self._sample_up, self._sample_down = now, uploaded, downloaded
        self.uploaded, self.downloaded = uploaded, downloaded


class Swarm:
    def __init__(self, info_hash, name=None, image_size=None, source="config"):
        self.info_hash = info_hash
        self.name = name or info_hash.hex()
        self.image_size = image_size
        self.source = source
        self.peers = {}            # (ip, peer_id) -> Peer, active only
        self.by_addr = {}          # (ip, port) -> Peer
        self.groups = {}           # group -> {key: Peer}, active non-origin peers
        self.origins = {}          # key -> Peer, active origin seeders
        self.origin_assignments = {}   # origin key -> set of downloaders assigned to it
        self.bridges = {}          # group -> its bridges or gateways (policy.choose_bridges)
        self.stripe_index = {}     # downloader holding an origin slot -> (stripe index, since)
        self.gone = {}             # key -> Peer that stopped or went silent
        self.completed = 0
        self.largest_left = 0

    # -- membership -------------------------------------------------------------------------
    def _add(self, peer):
        self.peers[peer.key] = peer
        self.by_addr[(peer.ip, peer.port)] = peer
        if peer.origin:
            self.origins[peer.key] = peer
        else:
            self.groups.setdefault(peer.group, {})[peer.key] = peer

    def _remove(self, peer, state):
        self.peers.pop(peer.key, None)
        if self.by_addr.get((peer.ip, peer.port)) is peer:
            del self.by_addr[(peer.ip, peer.port)]
        if peer.origin:
            self.origins.pop(peer.key, None)
            self.origin_assignments.pop(peer.key, None)
        else:
            members = self.groups.get(peer.group)
            if members is not None:
                members.pop(peer.key, None)
                if not members:
                    del self.groups[peer.group]
                    self.bridges.pop(peer.group, None)
            self._release(peer)
        peer.state = state
        peer.up_rate = peer.down_rate = 0.0
        self.gone[peer.key] = peer

    def _replace_host(self, ip, host, port, key, keep=None):
        """Drop every row, active or gone, that an announce from ``ip`` as ``host`` on ``port``
        with peer id ``key[1]`` supersedes: the newest announce of a host is its row.

        A host is its address and its name: an agent restarted after a power-off announces
        with a new peer id, often on a new port, and its old row — silent, stopped or failed,
        kept for ``forget_after`` — would otherwise stand beside the new one and tell the
        fleet wait the old story (not done, or done). Without a name, the address and port
        are the host. Only rows of ``ip`` are looked at, so no announce touches another
        address's row, and a name is bound to its address (hostnames.py).
        """
        def superseded(peer):
            same = peer.key == key or peer.port == port or (host is not None and peer.host == host)
            return peer is not keep and peer.ip == ip and same

        for peer in [p for p in self.peers.values() if superseded(p)]:
            self._remove(peer, "replaced")
        for old in [k for k, p in self.gone.items() if superseded(p)]:
            del self.gone[old]

    def _release(self, peer):
        for assigned in self.origin_assignments.values():
            assigned.discard(peer)

    def announce(self, req, ip, name, config, rng, now):
        """Apply one parsed announce from ``ip`` and return the bencodable response.

        ``name`` is (host, verified) as hostnames.py resolved it. Every row this touches is
        keyed or looked up by ``ip``: an announce changes only rows of its own address.
        """
        key = (ip, req.peer_id)
        peer = self.peers.get(key)
        if req.error is not None:
            self._failed(req, ip, name, config, now)
            return self._response(config, [], req)
        if req.event == "stopped":
            if peer is not None:
                self._remove(peer, "stopped")
                log.debug("%s: %s stopped", self.name, _label(peer))
            return self._response(config, [], req)

        # The agent's own reports (a fetch in its local phase) come from no torrent: nobody
        # can connect to that peer yet (policy L1). Its torrent's first announce replaces it.
        listening = not req.peer_id.startswith(REPORT_PEER_ID_PREFIX)
        if not listening and self._late_report(ip, req.port, now, config.min_interval):
            return self._response(config, [], req)
        peer = self._current_peer(peer, key, ip, name, req.port, config.topology, now)
        self._note_progress(peer, req, listening, now)
        return self._answer(peer, req, config, rng, now)

    def _current_peer(self, peer, key, ip, name, port, topology, now):
        """``peer``, or the new row that takes its place when it is new or its port or host changed."""
        host, verified = name
        if peer is None or peer.port != port or peer.host != host:
            previous = peer or self.gone.get(key)
            self._replace_host(ip, host, port, key)
            peer = Peer(key, ip, port, now)
            if previous is not None:
                peer.first_seen, peer.counted = previous.first_seen, previous.counted
            peer.host, peer.verified = host, verified
            peer.group = topology.group_of(ip)
            peer.origin = topology.is_seeder(ip)
            peer.site_seeder = not peer.origin and topology.is_site_seeder(ip)
            self._add(peer)
            log.debug("%s: new peer %s group=%s origin=%s", self.name, _label(peer),
                      peer.group, peer.origin)
        return peer

    def _note_progress(self, peer, req, listening, now):
        """What the announce says of ``peer``: its transfer, what it has left, a completion."""
        peer.sample(req.uploaded, req.downloaded, now, restarted=req.event == "started")
        peer.listening = listening
        peer.left = req.left
        peer.last_seen = now
        if req.left > self.largest_left:
            self.largest_left = req.left
        if req.left == 0:
            self._release(peer)
            if req.event == "completed" and not peer.counted:
                peer.counted = True
                self.completed += 1

    def _answer(self, peer, req, config, rng, now):
        """The response to ``peer``'s announce: the peers the policy picks for it, its stripe."""
        topology = config.topology
        numwant = config.default_numwant if req.numwant is None else req.numwant
        groups = {group: list(members.values()) for group, members in self.groups.items()}
        if not peer.origin:
            self._choose_bridges(peer, groups.get(peer.group, ()), topology)
        view = View(groups, list(self.origins.values()), self.origin_assignments, self.bridges)
        decision = select_peers(peer, view, topology, numwant, rng)
        if decision.assigned is not None:
            self.origin_assignments.setdefault(decision.assigned.key, set()).add(peer)
        tracker_id = None
        if topology.stripes and not peer.origin:
            tracker_id = stripes.tracker_id(*self._stripe_of(peer, topology, now, config.min_interval))
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s: %s (group %s, left %d) gets %s%s", self.name, _label(peer),
                      peer.group, peer.left, decision.explain(),
                      f"; {tracker_id[len(stripes.PREFIX):]}" if tracker_id else "")
        # A holder's stripe changes as slots are taken and freed: it hears back sooner.
        holder = peer in self.stripe_index
        return self._response(config, decision.peers, req, tracker_id,
                              interval=config.min_interval if holder else config.interval)

    def _late_report(self, ip, port, now, recent):
        """Is a local-phase report from ``ip``:``port`` late: sent before its torrent's first
        announce but arriving after it? Its torrent's row then announced ``recent``ly; a row
        of an earlier run (an agent restarted on the same port) went quiet and is replaced."""
        current = self.by_addr.get((ip, port))
        return current is not None and current.listening and now - current.last_seen < recent

    def _stripe_of(self, peer, topology, now, settle):
        """(count, residues) of ``peer``'s origin stripe (policy O4); no residues: none.

        A holder keeps its index while it holds its slot. Indices no holder has are dealt
        only to holders that have held theirs for ``settle`` seconds: at the start of a run
        the other slots fill within seconds, and a stripe dealt away then would be asked
        for twice until the next announce.
        """
        holders = {p for assigned in self.origin_assignments.values() for p in assigned}
        count = topology.origin_fanout * max(1, len(self.origins))
        held = self.stripe_index
        for gone in [p for p, (i, _since) in held.items() if p not in holders or i >= count]:
            del held[gone]
        for holder in sorted(holders - held.keys(), key=lambda p: (p.first_seen, str(p.ip), p.key[1])):
            index = stripes.index_for({p: i for p, (i, _since) in held.items()}, count)
            if index is None:
                break
            held[holder] = (index, now)
        if peer not in held:
            return count, frozenset()
        settled = [p for p, (_i, since) in held.items() if now - since >= settle]
        if peer not in settled:
            return count, frozenset({held[peer][0]})
        indices = {p: i for p, (i, _since) in held.items()}
        dealt = stripes.assign(settled, indices, count, taken=set(indices.values()))
        return count, dealt[peer]

    def _choose_bridges(self, peer, members, topology):
        """Renew the bridges of the announcing peer's group; a peer that stops being a
        bridge gives its origin slot back (policy O2)."""
        before = self.bridges.get(peer.group, ())
        after = choose_bridges(members, before, peer, topology)
        if after:
            self.bridges[peer.group] = after
        else:
            self.bridges.pop(peer.group, None)
        for dropped in (p for p in before if p not in after):
            self._release(dropped)
        if after != before and log.isEnabledFor(logging.DEBUG):
            log.debug("%s: group %s %s now: %s", self.name, peer.group,
                      "gateways" if any(p.left == 0 for p in after) else "bridges",
                      ", ".join(_label(p) for p in after) or "none")

    def _failed(self, req, ip, name, config, now):
        """A p2pfleet job reports (event=stopped, p2pfleet_error) that it failed, and why.

        Its libtorrent announces used another, random peer id, so the peer is found by id or
        else by the address and port it announced from; its own event=stopped may come first.
        """
        key = (ip, req.peer_id)
        peer = self.peers.get(key) or self.by_addr.get((ip, req.port))
        if peer is not None:
            self._remove(peer, "failed")
        else:
            peer = self.gone.get(key)
            if peer is None:
                same = [p for p in self.gone.values() if p.ip == ip and p.port == req.port]
                peer = max(same, key=lambda p: p.last_seen, default=None)
            if peer is None:
                # Never announced before (or forgotten): keep one failed row for the address.
                peer = Peer(key, ip, req.port, now)
                peer.host, peer.verified = name
                peer.group = config.topology.group_of(ip)
                peer.origin = config.topology.is_seeder(ip)
                peer.left = req.left
                self.gone[peer.key] = peer
            peer.state = "failed"
        # The report is the host's newest word: its other rows (an earlier run's) go.
        self._replace_host(ip, name[0], req.port, key, keep=peer)
        peer.error = req.error
        peer.last_seen = now
        log.warning("%s: %s failed: %s", self.name, _label(peer), req.error)

    def _response(self, config, peers, req, tracker_id=None, interval=None):
        complete = sum(1 for p in self.peers.values() if p.left == 0)
        response = {
            "interval": config.interval if interval is None else interval,
            "min interval": config.min_interval,
            "complete": complete,
            "incomplete": len(self.peers) - complete,
        }
        if tracker_id is not None:
            response["tracker id"] = tracker_id
        if req.compact:
            response["peers"] = b"".join(p.compact for p in peers if p.ip.version == 4)
            response["peers6"] = b"".join(p.compact for p in peers if p.ip.version == 6)
        else:
            # BEP 3's "peer id" is left out (BEP 23 makes it optional; clients check the id
            # in the handshake anyway): echoed, it would let anyone announce as someone else.
            response["peers"] = [{"ip": str(p.ip), "port": p.port} for p in peers]
        return response

    def expire(self, now, silent_after, forget_after):
        for peer in [p for p in self.peers.values() if now - p.last_seen > silent_after]:
            self._remove(peer, "silent")
            log.info("%s: %s went silent", self.name, _label(peer))
        for key in [k for k, p in self.gone.items() if now - p.last_seen > forget_after]:
            del self.gone[key]

    # -- reporting ----------------------------------------------------------------------------
    @property
    def size(self):
        return self.image_size or self.largest_left

    def scrape(self):
        complete = sum(1 for p in self.peers.values() if p.left == 0)
        return {"complete": complete, "downloaded": self.completed,
                "incomplete": len(self.peers) - complete}

    def status(self, now, wall_now, with_peers=True):
        size = self.size
        rows, bytes_left, terminals, fetched, local = [], 0, 0, 0, 0
        bridges = {p for chosen in self.bridges.values() for p in chosen}
        for peer in [*self.peers.values(), *self.gone.values()]:
            if not peer.origin:
                terminals += 1
                bytes_left += min(peer.left, size) if size else peer.left
                fetched += peer.downloaded
                local += _local(peer, size)
            if with_peers:
                stripe = self.stripe_index.get(peer, (None,))[0]
                rows.append(self._peer_row(peer, size, now, wall_now, peer in bridges, stripe))
        active = self.peers.values()
        totals = {
            "peers": len(self.peers),
            "terminals": terminals,
            "origins": len(self.origins),
            "downloading": sum(1 for p in active if p.left > 0),
            "complete": sum(1 for p in active if p.left == 0 and not p.origin),
            "stopped": sum(1 for p in self.gone.values() if p.state == "stopped"),
            "silent": sum(1 for p in self.gone.values() if p.state == "silent"),
            "failed": sum(1 for p in self.gone.values() if p.state == "failed"),
            "completed_events": self.completed,
            "bytes_total": size * terminals,
            "bytes_left": bytes_left,
            "bytes_fetched": fetched,
            "bytes_local": local,
            "progress": _fraction(size * terminals - bytes_left, size * terminals),
            "upload_rate": sum(p.up_rate for p in active),
            "download_rate": sum(p.down_rate for p in active),
        }
        status = {"info_hash": self.info_hash.hex(), "name": self.name, "image_size": size,
                  "source": self.source, "totals": totals}
        if with_peers:
            rows.sort(key=lambda row: (not row["origin"], row["host"] or "", row["ip"], row["port"]))
            status["peers"] = rows
        return status

    @staticmethod
    def _peer_row(peer, size, now, wall_now, bridge=False, stripe=None):
        if peer.state != "active":
            state = peer.state
        elif peer.origin:
            state = "seeding"
        else:
            state = "complete" if peer.left == 0 else "downloading"
        return {
            "host": peer.host, "verified": peer.verified, "ip": str(peer.ip), "port": peer.port, "group": peer.group,
            "origin": peer.origin, "site_seeder": peer.site_seeder, "bridge": bridge, "stripe": stripe, "state": state, "error": peer.error, "left": peer.left,
            "progress": _fraction(size - min(peer.left, size), size) if size else (1.0 if peer.left == 0 else 0.0),
            "uploaded": peer.uploaded, "downloaded": peer.downloaded, "local": 0 if peer.origin else _local(peer, size),
            "upload_rate": round(peer.up_rate, 1), "download_rate": round(peer.down_rate, 1),
            "last_seen": round(wall_now - (now - peer.last_seen), 3),
            "seen_ago": round(now - peer.last_seen, 3),
        }


def _local(peer, size):
    """Bytes a terminal holds that it did not download in this swarm: taken from its own disks
    (delta transfer) or resumed. From its announces: held (size - left) minus downloaded."""
    return max(0, size - min(peer.left, size) - peer.downloaded) if size else 0


def _fraction(part, whole):
    return round(part / whole, 6) if whole else 0.0


def _label(peer):
    return f"{peer.host or peer.ip}:{peer.port}"


class Tracker:
    """All swarms of one tracker process plus the counters behind /metrics."""

    def __init__(self, config, rng=None, clock=time.monotonic, wall_clock=time.time):
        self.config = config
        self.rng = rng or random.Random()
        self.clock = clock
        self.wall_clock = wall_clock
        self.swarms = {}
        self.names = HostNames(config.hosts, self.hold_names_for(config))
        self.counters = {"announce_ok": 0, "announce_failed": 0, "scrape": 0}
        for info_hash in config.info_hashes:
            self.register(info_hash, source="config")
        self.rescan()

    @staticmethod
    def hold_names_for(config):
        """Seconds a first-come host name stays with its address after its last announce: as
        long as a row of that host can exist (active, then silent or stopped until forgotten),
        so no other address can put up a row under its name next to it."""
        return max(config.interval * config.expiry_intervals, config.forget_after)

    def announce(self, swarm, req, ip):
        """Apply one announce from ``ip`` to ``swarm``; HostRefused if its ``host=`` belongs
        to another address (then nothing changes)."""
        now = self.clock()
        name = self.names.resolve(ip, req.host, now)
        return swarm.announce(req, ip, name, self.config, self.rng, now)

    def register(self, info_hash, name=None, image_size=None, source="admin"):
        swarm = self.swarms.get(info_hash)
        if swarm is None:
            swarm = self.swarms[info_hash] = Swarm(info_hash, name, image_size, source)
            log.info("registered %s (%s) from %s", info_hash.hex(), swarm.name, source)
        else:
            swarm.name = name or swarm.name
            swarm.image_size = image_size or swarm.image_size
        return swarm

    def unregister(self, info_hash):
        swarm = self.swarms.pop(info_hash, None)
        if swarm is not None:
            log.info("unregistered %s (%s)", info_hash.hex(), swarm.name)
        return swarm is not None

    def rescan(self):
        """Register every manifest in ``manifest_dir``; forget swarms whose manifest is gone."""
        directory = self.config.manifest_dir
        if directory is None:
            return
        try:
            names = sorted(n for n in os.listdir(directory) if n.endswith(".manifest.json"))
        except OSError as exc:
            log.warning("cannot list manifest_dir %s: %s", directory, exc.strerror)
            return
        seen = set()
        for name in names:
            path = os.path.join(directory, name)
            try:
                info_hash, title, size = manifest_fields(read_manifest_file(path))
            except ManifestError as exc:
                log.warning("skipping manifest %s: %s", one_line(path), exc)
                continue
            seen.add(info_hash)
            self.register(info_hash, title, size, source=f"manifest {name}")
        for info_hash, swarm in list(self.swarms.items()):
            if swarm.source.startswith("manifest ") and info_hash not in seen:
                self.unregister(info_hash)

    def expire(self):
        now = self.clock()
        silent_after = self.config.interval * self.config.expiry_intervals
        for swarm in self.swarms.values():
            swarm.expire(now, silent_after, self.config.forget_after)
        self.names.expire(now)

    def status(self, with_peers=False):
        now, wall = self.clock(), self.wall_clock()
        return [s.status(now, wall, with_peers) for s in self.swarms.values()]


def read_manifest_file(path):
    """The parsed JSON of the manifest file at ``path``: a regular file, size-capped."""
    try:
        # O_NONBLOCK: opening a FIFO someone left in the directory must not hang the tracker.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ManifestError(f"cannot open: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ManifestError("not a regular file")
        if info.st_size > MAX_MANIFEST_BYTES:
            raise ManifestError(f"{info.st_size} bytes, more than {MAX_MANIFEST_BYTES}")
        try:
            data = handle.read(MAX_MANIFEST_BYTES + 1)
        except OSError as exc:
            raise ManifestError(f"cannot read: {exc.strerror}") from None
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"more than {MAX_MANIFEST_BYTES} bytes")
    return parse_manifest_json(data)


def parse_manifest_json(data):
    """Parse a manifest's JSON bytes; ManifestError names what is wrong."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ManifestError("JSON nested too deeply") from None
    except ValueError as exc:   # also bad UTF-8 and integers too long to convert
        raise ManifestError(f"not JSON: {exc}") from None


def manifest_fields(manifest):
    """(info_hash bytes, name, image_size) from a manifest document; ManifestError if unusable.

    The name ends up in log lines, the page and Prometheus labels, so it must be printable
    text (no control characters, no lone surrogates from a JSON ``\\udc80`` escape).
    """
    if not isinstance(manifest, dict):
        raise ManifestError("manifest must be a JSON object")
    value = manifest.get("info_hash")
    if not isinstance(value, str) or len(value) != 40:
        raise ManifestError("manifest has no 40-digit hex info_hash")
    try:
        info_hash = bytes.fromhex(value)
    except ValueError:
        raise ManifestError(f"info_hash {value!r} is not hex") from None
    name = manifest.get("name")
    size = manifest.get("image_size")
    if name is not None and not (isinstance(name, str) and 0 < len(name) <= MAX_NAME_CHARS and name.isprintable()):
        raise ManifestError(f"manifest name must be printable text of 1..{MAX_NAME_CHARS} characters")
    if size is not None and not (isinstance(size, int) and not isinstance(size, bool) and 0 <= size <= MAX_IMAGE_SIZE):
        raise ManifestError(f"manifest image_size must be an integer in 0..{MAX_IMAGE_SIZE}")
    return info_hash, name, size


def client_ip(address):
    """The peer's IP from a socket address; IPv4-mapped IPv6 becomes plain IPv4."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip
