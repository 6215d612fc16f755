"""The agent: the daemon on every host that owns its session and jobs (see docs/agent.md)."""

# Where the agent serves its root-only API unless its config names another socket; the
# modules' ``socket`` option defaults to it too.
DEFAULT_SOCKET = "/run/p2pfleet/agent.sock"
