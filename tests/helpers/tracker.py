"""A real tracker process and plain-socket clients for tracker tests, with bounded waits."""
import http.client
import json
import os
import resource
import signal
import socket
import subprocess
from urllib.parse import quote_from_bytes

import yaml

from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.bencode import decode

from . import P2PFLEET, wait


def free_port(host="127.0.0.1", *others):
    """A port free on ``host`` and on every one of ``others`` (a tracker listening on ::1 and
    127.0.0.1 needs the same port free on both: one free on ::1 alone may be taken on the other)."""
    for _attempt in range(50):
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        try:
            for other in others:
                with socket.socket(socket.AF_INET6 if ":" in other else socket.AF_INET) as s:
                    s.bind((other, port))
        except OSError:
            continue
        return port
    raise OSError(f"no port free on {host} and {', '.join(others)} after 50 tries")


wait_until = wait.until  # the tracker tests' name for it


class TrackerProcess:
    """``p2pfleet tracker`` on 127.0.0.1 with an ephemeral port and a config from a dict."""

    def __init__(self, tmp_path, config, port=None, name="tracker", nofile=None):
        """``nofile`` = (soft, hard) RLIMIT_NOFILE for the tracker process, like ``ulimit -n``."""
        self.nofile = nofile
        self.port = port or free_port()
        self.config = {"listen": [f"127.0.0.1:{self.port}"], "allowed_networks": ["127.0.0.0/8"],
                       "interval": 2, "min_interval": 1, **config}
        self.path = tmp_path / f"{name}.yml"
        self.path.write_text(yaml.safe_dump(self.config))
        self.log = tmp_path / f"{name}.log"
        self.popen = None
        self.start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        self._log = open(self.log, "a")
        limit = None if self.nofile is None else \
            (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, self.nofile))
        self.popen = subprocess.Popen(P2PFLEET + ["tracker", "--config", str(self.path), "--log-level", "debug"],
                                      stdout=self._log, stderr=subprocess.STDOUT, preexec_fn=limit)
        wait_until(self._serving, 15, f"tracker on port {self.port} serving status.json; log {self.log}")

    def _serving(self):
        if self.popen.poll() is not None:
            raise AssertionError(f"tracker exited {self.popen.returncode}:\n{self.log.read_text()[-3000:]}")
        try:
            return get(self.url + "/status.json")[0] == 200
        except OSError:
            return False

    def stop(self):
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                code = self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
                raise AssertionError("tracker ignored SIGTERM for 10 s") from None
            assert code == 0, f"tracker exited {code} on SIGTERM:\n{self.log.read_text()[-3000:]}"
        self._log.close()

    def log_lines(self):
        return self.log.read_text(errors="replace").splitlines()

    def metric(self, name):
        code, body = get(self.url + "/metrics")
        assert code == 200, f"/metrics answered {code}"
        for line in body.decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise AssertionError(f"/metrics has no {name}")

    def hup(self):
        self.popen.send_signal(signal.SIGHUP)

    def status(self, info_hash=None):
        path = f"/status/{info_hash}.json" if info_hash else "/status.json"
        code, body = get(self.url + path)
        assert code == 200, f"{path} answered {code}: {body[:200]!r}"
        return json.loads(body)


def get(url, source="127.0.0.1", headers=None, method="GET", body=None, timeout=10):
    """One HTTP request from a chosen loopback source address; returns (status, body)."""
    rest = url.split("://", 1)[1]
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.rpartition(":")
    host = host.strip("[]")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout, source_address=(source, 0))
    try:
        conn.connect()
        # Before the tracker binds its (ephemeral) port, a connect from the same address can
        # get that very port as its source and connect to itself (TCP simultaneous open):
        # the request would come back as the "response". That is nobody listening.
        if conn.sock.getsockname() == conn.sock.getpeername():
            raise ConnectionRefusedError(f"{url}: connected to itself, nobody listens on port {port}")
        conn.request(method, "/" + path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def announce(base, info_hash, peer_id, port, left=1000, source="127.0.0.1", event=None, **extra):
    params = {"info_hash": info_hash, "peer_id": peer_id, "port": str(port), "uploaded": "0",
              "downloaded": "0", "left": str(left), "compact": "1"}
    if event:
        params["event"] = event
    params.update({k: str(v) for k, v in extra.items()})
    query = "&".join(f"{k}={quote_from_bytes(v if isinstance(v, bytes) else v.encode())}"
                     for k, v in params.items())
    code, body = get(f"{base}/announce?{query}", source=source)
    assert code == 200, f"announce answered HTTP {code}: {body[:200]!r}"
    return decode(body)


def compact_peers(blob, width=6):
    out = []
    for i in range(0, len(blob), width):
        chunk = blob[i:i + width]
        ip = socket.inet_ntop(socket.AF_INET if width == 6 else socket.AF_INET6, chunk[:-2])
        out.append((ip, int.from_bytes(chunk[-2:], "big")))
    return out


def write_manifest(directory, name, info_hash_hex, image_size, torrent=None):
    path = os.path.join(directory, f"{name}.manifest.json")
    with open(path, "w") as f:
        json.dump({"info_hash": info_hash_hex, "name": name, "image_size": image_size,
                   "piece_size": 1 << 16, "torrent": torrent or f"{name}.torrent"}, f)
    return path


class LtPeer:
    """A libtorrent session on one loopback address downloading (or seeding) one torrent.

    ``stock=True`` leaves every setting at libtorrent's default except the listen address.
    Otherwise the session follows the engine's LAN profile and re-announces every second
    so the tracker sees progress while the test watches.
    """

    def __init__(self, ip, torrent, save_path, tracker_url, stock=False, download_limit=0, upload_limit=0):
        import libtorrent as lt
        self.lt = lt
        self.ip = ip
        port = free_port(ip)
        settings = {"listen_interfaces": f"{ip}:{port}"}
        if not stock:
            settings.update({
                "enable_dht": False, "enable_lsd": False, "enable_upnp": False, "enable_natpmp": False,
                "enable_outgoing_utp": False, "enable_incoming_utp": False,
                "allow_multiple_connections_per_ip": True, "min_announce_interval": 1,
                "download_rate_limit": download_limit, "upload_rate_limit": upload_limit,
            })
        self.session = lt.session(settings)
        if download_limit or upload_limit:
            # Loopback counts as a local network, which libtorrent exempts from rate limits.
            everyone = lt.ip_filter()
            everyone.add_rule("0.0.0.0", "255.255.255.255", 1 << lt.session.global_peer_class_id)
            self.session.set_peer_class_filter(everyone)
        atp = lt.add_torrent_params()
        atp.ti = lt.torrent_info(str(torrent))
        atp.save_path = str(save_path)
        atp.trackers = [tracker_url]
        self.handle = self.session.add_torrent(atp)

    def progress(self):
        return self.handle.status().progress

    def is_seed(self):
        return self.handle.status().is_seeding

    def dialed_ips(self):
        """Addresses this peer connected to. Incoming connections all come from 127.0.0.1
        on one machine, so only outgoing ones show whom the tracker introduced."""
        lt = self.lt
        return {p.ip[0] for p in self.handle.get_peer_info() if p.flags & lt.peer_info.outgoing_connection}

    def close(self):
        self.session.remove_torrent(self.handle)
        del self.handle, self.session


def sha256_of(path):
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
