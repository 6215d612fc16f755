"""The boot environment: what the terminal's boot loader will start next.

GRUB keeps its environment block in a 1024-byte file (``grub/grubenv``): a header line,
``key=value`` lines, and ``#`` padding. The collection's GRUB configuration reads
``next_entry`` (a one-shot boot, cleared when used) and otherwise ``saved_entry``.
"""
from .errors import P2PFleetError
from .files import read_capped

GRUBENV_SIZE = 1024
GRUBENV_HEADER = "# GRUB Environment Block\n"


class BootError(P2PFleetError):
    """The boot environment cannot be read or written as asked."""


def parse_grub_env(text: str) -> dict:
    """The variables of a GRUB environment block (an empty or damaged block has none)."""
    if not text.startswith(GRUBENV_HEADER):
        return {}
    found = {}
    for line in text[len(GRUBENV_HEADER):].split("\n"):
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if sep:
            found[key] = value.replace("\\n", "\n").replace("\\\\", "\\")
    return found


def read_grub_env(path: str) -> dict:
    """The variables in the GRUB environment block at ``path``."""
    raw = read_capped(path, 64 * GRUBENV_SIZE, "GRUB environment block", error=BootError)
    return parse_grub_env(raw.decode("utf-8", errors="replace"))
