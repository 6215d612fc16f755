"""The agent: the daemon on every host that owns its session and jobs (see docs/agent.md)."""
