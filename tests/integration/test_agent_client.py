"""The modules' agent client waits for an agent that is (re)starting, and only that long."""
import http.server
import json
import socketserver
import threading
import time

import pytest

from ansible_collections.p2pfleet.imaging.plugins.module_utils._agent_client import AgentClient, AgentError


class _Agent(http.server.BaseHTTPRequestHandler):
    def do_GET(self):      # noqa: N802 (http.server's name)
        body = json.dumps({"version": "test", "path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class _UnixHTTPServer(socketserver.UnixStreamServer):
    def get_request(self):
        request, _ = super().get_request()
        return request, ("agent", 0)


def test_an_agent_that_comes_up_after_the_call_started_is_waited_for(tmp_path):
    path = str(tmp_path / "agent.sock")
    servers = []

    def start_late():
        time.sleep(1.0)
        server = _UnixHTTPServer(path, _Agent)
        servers.append(server)
        server.serve_forever()

    threading.Thread(target=start_late, daemon=True).start()
    try:
        started = time.monotonic()
        assert AgentClient(path, timeout=10, start_wait=10).info()["path"] == "/v1/agent"
        assert time.monotonic() - started >= 0.9
    finally:
        for server in servers:
            server.shutdown()


def test_no_agent_fails_with_one_line_after_the_start_wait(tmp_path):
    started = time.monotonic()
    with pytest.raises(AgentError, match="no agent socket; is the p2pfleet-agent service running"):
        AgentClient(str(tmp_path / "none.sock"), timeout=5, start_wait=1.0).info()
    assert 0.9 <= time.monotonic() - started < 5
