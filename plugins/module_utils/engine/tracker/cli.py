"""``p2pfleet tracker --config FILE``: run the LAN tracker until SIGINT/SIGTERM."""

from ..daemon import serve_daemon
from .config import load


def register(subparsers):
    parser = subparsers.add_parser(
        "tracker", help="run the LAN tracker",
        description="Run the LAN tracker: announce/scrape, allow-lists, topology policy, "
                    "fleet status page. SIGHUP rescans the manifest directory.")
    parser.add_argument("--config", required=True, metavar="FILE", help="tracker config (YAML)")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                        help="overrides log_level from the config")
    parser.add_argument("--check", action="store_true",
                        help="only validate the config: print 'config OK' or its first error, and exit")
    parser.set_defaults(func=run)
    return parser


def run(args) -> int:
    # Imported here so other subcommands (and modules under AnsiballZ) never need aiohttp.
    from .server import serve

    return serve_daemon(args, load, serve)
