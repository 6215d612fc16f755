"""What the swarm_client role promises on every host it converged (Molecule's verify step,
pytest-testinfra over the lab's SSH)."""
import json

import yaml

ASK_AGENT = """
import http.client, json, socket
class Unix(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect('/run/p2pfleet/agent.sock')
conn = Unix('agent')
conn.request('GET', '/v1/agent')
reply = conn.getresponse()
print(json.dumps({'status': reply.status, 'body': json.loads(reply.read())}))
"""


def test_the_agent_runs_and_starts_at_boot(host):
    service = host.service("p2pfleet-agent")
    assert service.is_running and service.is_enabled


def test_its_socket_is_root_only(host):
    socket = host.file("/run/p2pfleet/agent.sock")
    assert socket.is_socket
    assert (socket.user, socket.group, socket.mode) == ("root", "root", 0o600)


def test_its_config_comes_from_the_inventory(host):
    config = host.file("/etc/p2pfleet/agent.yml")
    assert (config.user, config.mode) == ("root", 0o600)
    agent = yaml.safe_load(config.content_string)
    assert agent["host_name"] == host.check_output("hostname")
    assert len(agent["trackers"]) == 1 and agent["trackers"][0].endswith(":6969/announce")
    # exactly the inventory's three hosts: the server and both terminals
    assert len(agent["allowed_networks"]) == 3
    assert all(network.endswith("/32") for network in agent["allowed_networks"])


def test_the_agent_answers_on_its_socket_with_that_config(host):
    reply = json.loads(host.check_output("/usr/bin/python3 -c %s", ASK_AGENT))
    assert reply["status"] == 200
    info = reply["body"]
    assert info["host_name"] == host.check_output("hostname")
    assert len(info["allowed_networks"]) == 3


def test_the_engine_runs_from_its_virtualenv(host):
    assert host.run("/opt/p2pfleet/venv/bin/python /opt/p2pfleet/bin/p2pfleet --help").rc == 0
    version = host.check_output("/opt/p2pfleet/venv/bin/python -c 'import libtorrent; print(libtorrent.__version__)'")
    assert version.startswith("2.1.")
