# -*- coding: utf-8 -*-
# Copyright: p2pfleet.imaging contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Talk to the local p2pfleet agent over its Unix socket. Standard library only.

Private to the collection: modules use it to put jobs and read their progress; it never
imports libtorrent or the engine, so a module stays small and starts fast.
"""
from __future__ import annotations

import http.client
import json
import socket
import time


class AgentError(Exception):
    """The agent refused a request, or could not be reached. ``str()`` is one line."""

    def __init__(self, message, status=None):
        super().__init__(message)
        self.status = status


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class AgentClient:
    """One method per API call of the agent; each returns the decoded JSON answer."""

    def __init__(self, socket_path, timeout=180.0, start_wait=15.0):
        self.socket_path = socket_path
        self.timeout = timeout
        # An agent that is restarting (systemd restarts it seconds after a crash, a role
        # restarts it after an update) has no socket for a moment: wait that long for it.
        self.start_wait = start_wait

    def _connect(self):
        deadline = time.monotonic() + self.start_wait
        while True:
            conn = _UnixConnection(self.socket_path, self.timeout)
            try:
                conn.connect()
                return conn
            except (FileNotFoundError, ConnectionRefusedError):
                conn.close()
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.5)

    def _request(self, method, path, body=None):
        conn = None
        try:
            conn = self._connect()
            payload = json.dumps(body).encode("utf-8") if body is not None else None
            headers = {"Content-Type": "application/json"} if payload is not None else {}
            conn.request(method, "/v1" + path, body=payload, headers=headers)
            response = conn.getresponse()
            raw = response.read()
        except FileNotFoundError:
            raise AgentError(f"{self.socket_path}: no agent socket; is the p2pfleet-agent service running?") from None
        except PermissionError:
            raise AgentError(f"{self.socket_path}: permission denied; only root may talk to the agent") from None
        except ConnectionRefusedError:
            raise AgentError(f"{self.socket_path}: the agent is not listening (stale socket)") from None
        except socket.timeout:
            raise AgentError(f"{self.socket_path}: the agent did not answer within {self.timeout:g} s") from None
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise AgentError(f"{self.socket_path}: cannot talk to the agent: {exc}") from None
        finally:
            if conn is not None:
                conn.close()
        try:
            data = json.loads(raw.decode("utf-8"))
        except ValueError:
            raise AgentError(f"the agent answered {response.status} with a body that is not JSON",
                             response.status) from None
        if not isinstance(data, dict):
            raise AgentError(f"the agent answered {response.status} with JSON that is not an object", response.status)
        if response.status >= 400:
            raise AgentError(data.get("error") or f"the agent answered {response.status}", response.status)
        return data

    def info(self):
        return self._request("GET", "/agent")

    def jobs(self):
        return self._request("GET", "/jobs")["jobs"]

    def job(self, job_id):
        """The job, or None when the agent has no such job."""
        try:
            return self._request("GET", "/jobs/" + job_id)["job"]
        except AgentError as exc:
            if exc.status == 404:
                return None
            raise

    def put_fetch(self, manifest, target, dry_run=False, **options):
        """Ensure a fetch of ``manifest`` into ``target``; ``{"changed": bool, "job": {...}}``.
        ``dry_run``: the agent says what it would change (``job`` is the job there is, or
        None) and changes nothing."""
        return self._request("PUT", "/jobs" + _dry(dry_run), dict(options, action="fetch", manifest=manifest,
                                                                  target=target))

    def put_seed(self, manifest, image, dry_run=False, **options):
        """Ensure a seed of ``image``; ``{"changed": bool, "job": {...}}`` (``dry_run`` as above)."""
        return self._request("PUT", "/jobs" + _dry(dry_run), dict(options, action="seed", manifest=manifest,
                                                                  image=image))

    def reimage(self):
        """This terminal's reimage: ``{"record": ..., "situation": ...}``."""
        return self._request("GET", "/reimage")

    def reimage_step(self, step, **options):
        """Move this terminal's reimage one step (the agent decides whether it may)."""
        return self._request("PUT", "/reimage", dict(options, step=step))

    def stop(self, job_id, dry_run=False):
        return self._request("POST", "/jobs/" + job_id + "/stop" + _dry(dry_run))

    def remove(self, job_id, dry_run=False):
        return self._request("DELETE", "/jobs/" + job_id + _dry(dry_run))


def _dry(dry_run) -> str:
    return "?dry_run=1" if dry_run else ""
