"""What the two daemons (agent and tracker) share when they start."""
import logging

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: str) -> None:
    """Log to stderr (the journal, under systemd) at ``level`` and above."""
    level = level.upper()
    logging.basicConfig(level=level, format=LOG_FORMAT)
    logging.getLogger("p2pfleet").setLevel(level)
