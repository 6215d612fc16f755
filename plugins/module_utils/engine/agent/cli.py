"""``p2pfleet agent --config FILE``: run the agent until SIGINT/SIGTERM (SIGHUP reloads)."""
import signal

from ..daemon import serve_daemon
from .config import LOG_LEVELS, load


def register(subparsers):
    parser = subparsers.add_parser(
        "agent", help="run the swarm agent (the daemon on every host)",
        description="Run the swarm agent: one libtorrent session and its jobs, driven over a "
                    "root-only Unix socket. SIGTERM saves every job's resume data; SIGHUP reloads "
                    "the config.")
    parser.add_argument("--config", required=True, metavar="FILE", help="agent config (YAML)")
    parser.add_argument("--log-level", choices=LOG_LEVELS, help="overrides log_level from the config")
    parser.add_argument("--check", action="store_true",
                        help="only validate the config: print 'config OK' or its first error, and exit")
    parser.set_defaults(func=run)
    return parser


def run(args) -> int:
    # A reload (SIGHUP) that comes while the agent starts — the role restarts it and may
    # reload it a moment later — must not end it (SIGHUP's default): it has just read its
    # config anyway. serve() installs the real handler once it runs.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # Imported here so other subcommands (and modules under AnsiballZ) never need aiohttp.
    from .server import serve

    return serve_daemon(args, load, serve)
