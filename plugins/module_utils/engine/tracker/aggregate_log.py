"""Log what a client can trigger at will without letting it fill the disk.

Malformed requests, descriptor exhaustion and evicted connections can happen thousands of
times a second. The first of each kind is logged at once as one line; repeats are counted
and reported once per window with the count. Never a traceback: the line names the
exception and, for our own bugs, the file and line where it was raised.
"""

import time
import traceback

# One summary line per kind per minute at most, however hard the tracker is hit.
WINDOW = 60.0
# Kinds are labels chosen by the code, but exception type names come from the outside
# world; past this many distinct kinds they share one, so memory stays bounded.
MAX_KINDS = 64
# A sample line quotes request data; keep it short.
MAX_LINE = 300


class _Kind:
    __slots__ = ("level", "since", "repeats")

    def __init__(self, level, since):
        self.level, self.since, self.repeats = level, since, 0


class AggregatedLog:
    def __init__(self, logger, window=WINDOW, clock=time.monotonic):
        self._logger = logger
        self._window = window
        self._clock = clock
        self._kinds = {}

    def report(self, kind, level, message):
        """Log ``message`` if ``kind`` was quiet for a window, else count it for the summary."""
        if kind not in self._kinds and len(self._kinds) >= MAX_KINDS:
            kind = "other errors"
        entry = self._kinds.get(kind)
        if entry is not None:
            entry.repeats += 1
            return
        self._kinds[kind] = _Kind(level, self._clock())
        self._logger.log(level, "%s", one_line(message))

    def flush(self):
        """Report the counts of windows that have ended; called periodically."""
        now = self._clock()
        for kind, entry in list(self._kinds.items()):
            if now - entry.since < self._window:
                continue
            if entry.repeats:
                self._logger.log(entry.level, "%s: %d more in the last %.0f s",
                                 kind, entry.repeats, now - entry.since)
                entry.since, entry.repeats = now, 0
            else:
                del self._kinds[kind]


def one_line(text):
    """``text`` as one printable line of bounded length (request data can hold anything)."""
    text = str(text).encode("unicode_escape").decode("ascii")
    return text if len(text) <= MAX_LINE else text[:MAX_LINE] + "..."


def describe(exc):
    """``Type: message (at file:line)`` for an exception, where it was raised, no traceback."""
    frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ else []
    where = f" (at {frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"
