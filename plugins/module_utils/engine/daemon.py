"""What the two daemons (agent and tracker) share when they start."""
import asyncio
import logging

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: str) -> None:
    """Log to stderr (the journal, under systemd) at ``level`` and above."""
    level = level.upper()
    logging.basicConfig(level=level, format=LOG_FORMAT)
    logging.getLogger("p2pfleet").setLevel(level)


def serve_daemon(args, load, serve) -> int:
    """Load the daemon's config (``load``); with ``--check`` only say it is valid; else log
    at its level and run ``serve(config)`` until the daemon is stopped."""
    config = load(args.config)
    if args.check:
        # The command's output, never a module's.
        print(f"{args.config}: config OK")  # pylint: disable=ansible-bad-function
        return 0
    setup_logging(args.log_level or config.log_level)
    asyncio.run(serve(config))
    return 0
