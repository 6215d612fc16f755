"""The controller's reading of one image's fleet status: which row speaks for a terminal, and
the fleet wait's rules — who is done, who is dropped and why, when the whole fleet stalled,
and how long the tracker may be away.

``fleet_wait`` (an action plugin) reads ``/status/<info_hash>.json`` every few seconds and
hands each answer, or each failure to get one, to a :class:`FleetWait`; ``fleet_status``
answers with :func:`fleet_done`. Both read a row by :func:`rows_by_host` and
:func:`holds_image`, from :func:`status_url`. No I/O and no clock of its own here: times are passed
in, so the rules are tested with a fake clock and the plugin stays glue.

The rules, in one place:

- A terminal is **done** once its row holds the whole image (``left`` 0, not failed); it
  stays done for the rest of the wait, even when a tracker restart loses its row.
- A terminal is **dropped** — left out of the wait, not a failure of it — when it made no
  progress (no change in what it holds, no new row) for ``drop_after`` seconds while another
  terminal is done or progressed within the last ``drop_after`` seconds; one whose job
  reported a failure during the wait is dropped at once. A terminal never seen counts from
  the start of the wait ("never announced"). ``drop_after`` 0 drops nobody: the wait is for
  every terminal, and the stall rule alone ends it. A dropped terminal that gets the whole image
  before the wait ends is done after all.
- The **whole fleet stalls** when no terminal progressed for ``stall_timeout`` seconds while
  some are still waited for: the wait fails with one line naming what went away (the
  origin's row silent, stopped, failed or gone), not the terminals that waited for it.
- While the **tracker** cannot be read, nothing is decided and the drop and stall clocks
  stand still (nobody's progress can be seen, so nobody's silence counts); it fails only
  when the tracker stayed away for more than ``tracker_grace`` seconds.
- ``timeout`` (0 = none) caps the whole wait in wall-clock seconds.
"""

import time

# Terminals named in one progress line at most; the rest are counted.
MAX_NAMED = 8


class WaitFailed(Exception):
    """The fleet wait gives up; the message is one line for the task's ``msg``."""


def status_url(base, info_hash):
    """Where the tracker at ``base`` publishes the status of one image's swarm."""
    return f"{base.rstrip('/')}/status/{info_hash.lower()}.json"


def holds_image(row):
    """The terminal of ``row`` holds the whole image (a row whose job failed never does)."""
    return row.get("left") == 0 and row.get("state") != "failed"


def fleet_done(status, terminals):
    """``(done, missing)`` for one read of ``status``: every terminal of ``terminals`` (or,
    when it is empty, every terminal the tracker knows) holds the image; and the terminals
    of ``terminals`` the tracker has no row of."""
    by_host = rows_by_host(status)
    missing = [host for host in terminals if host not in by_host]
    wanted = [by_host[host] for host in terminals if host in by_host] if terminals else \
        [row for row in status.get("peers", []) if not row.get("origin")]
    return bool(wanted) and not missing and all(holds_image(row) for row in wanted), missing


def rows_by_host(status):
    """host -> the row that speaks for it, for the terminals (non-origin rows) of ``status``.

    The tracker keeps one row per host and address; a host bound to two addresses may have
    two, and the one it announced from last is the one that counts.
    """
    rows = {}
    for row in status.get("peers", []):
        host = row.get("host")
        if row.get("origin") or not host:
            continue
        if host not in rows or row.get("seen_ago", 0) < rows[host].get("seen_ago", 0):
            rows[host] = row
    return rows


def clock_time(wall):
    """HH:MM:SS of a wall-clock timestamp, in the controller's local time."""
    return time.strftime("%H:%M:%S", time.localtime(wall))


def percent(fraction):
    """40 %, 98.7 %: one decimal where it tells something."""
    return f"{100 * fraction:.1f}".rstrip("0").rstrip(".") + " %"


def mib(n):
    return f"{n / (1 << 20):,.1f} MiB"


def _eta(seconds):
    if seconds is None:
        return "--:--"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _names(names):
    names = list(names)
    return ", ".join(names[:MAX_NAMED]) + (f" and {len(names) - MAX_NAMED} more" if len(names) > MAX_NAMED else "")


class _Terminal:
    __slots__ = ("name", "row", "held", "moved", "seen")

    def __init__(self, name, started):
        self.name = name
        self.row = None         # its last row seen (kept when a tracker restart loses it)
        self.held = None        # bytes it held at the last read
        self.moved = started    # effective time of its last progress
        self.seen = False       # a row of it was read during this wait


class FleetWait:
    def __init__(self, terminals, drop_after, stall_timeout, tracker_grace, timeout, now, wall):
        """``now``: a monotonic clock reading; ``wall``: the wall clock at the same moment."""
        self.terminals = {name: _Terminal(name, now) for name in dict.fromkeys(terminals)}
        self.drop_after, self.stall_timeout = drop_after, stall_timeout
        self.tracker_grace, self.timeout = tracker_grace, timeout
        self.started, self.started_wall = now, wall
        self.done = {}              # name -> True, in the order terminals got done
        self.dropped = {}           # name -> one-line reason
        self.status = {}
        self.paused = 0.0           # seconds the tracker was away: they count for nobody
        self.away_since = None      # (monotonic, wall) of the first failed read of an outage
        self.away_error = None

    # -- what the plugin reports --------------------------------------------------------------
    def read(self, status, now):
        """A status the tracker answered at ``now``; returns event lines to print at once."""
        events = []
        if self.away_since is not None:
            away = now - self.away_since[0]
            self.paused += away
            events.append(f"tracker back after {int(away)} s (unreachable since {clock_time(self.away_since[1])})")
            self.away_since = self.away_error = None
        self.status = status
        t = self._effective(now)
        size = status.get("image_size") or 0
        rows = rows_by_host(status)
        for term in self.terminals.values():
            row = rows.get(term.name)
            if row is None:
                continue
            held = size - min(row.get("left", size), size)
            if not term.seen or held != term.held or _where(row) != _where(term.row):
                term.moved = t
            term.row, term.held, term.seen = row, held, True
            if holds_image(row) and term.name not in self.done:
                self.done[term.name] = True
                if self.dropped.pop(term.name, None) is not None:
                    events.append(f"{term.name} was dropped and holds the image now")
        events += self._drop(now, t)
        return events

    def unreachable(self, error, now, wall):
        """A failed read of the tracker at ``now``; returns event lines to print at once."""
        self.away_error = error
        if self.away_since is None:
            self.away_since = (now, wall)
            return [f"tracker unreachable since {clock_time(wall)}: {error}"]
        return []

    def verdict(self, now):
        """True once every terminal not dropped is done; WaitFailed when the wait gives up."""
        if self.away_since is not None:
            away = now - self.away_since[0]
            if away > self.tracker_grace:
                raise WaitFailed(f"fleet_wait: tracker unreachable since {clock_time(self.away_since[1])} "
                                 f"({int(away)} s, more than tracker_grace {self.tracker_grace} s): "
                                 f"{self.away_error}")
        waiting = self.waiting()
        if not waiting:
            if not self.done:
                raise WaitFailed(f"fleet_wait: no terminal holds the image; dropped: "
                                 f"{'; '.join(f'{n} ({r})' for n, r in self.dropped.items())}")
            return True
        if self.timeout and now - self.started > self.timeout:
            raise WaitFailed(f"fleet_wait: not every terminal holds the image after {self.timeout} s (timeout); "
                             f"waiting for {_names(waiting)}")
        t = self._effective(now)
        quiet = t - max(term.moved for term in self.terminals.values())
        if self.stall_timeout and self.away_since is None and quiet > self.stall_timeout:
            raise WaitFailed(f"fleet_wait: no terminal progressed for {int(quiet)} s (stall_timeout "
                             f"{self.stall_timeout} s): {self._what_went_away(waiting, t)}")
        return False

    def outcome(self):
        """The task's return values: done, dropped, missing (never seen during the wait)."""
        return {"done": list(self.done), "dropped": dict(self.dropped),
                "missing": [t.name for t in self.terminals.values() if not t.seen]}

    def waiting(self):
        return [n for n in self.terminals if n not in self.done and n not in self.dropped]

    def line(self, now):
        """One progress line for the whole lab."""
        status = self.status
        head = f"p2pfleet: {status.get('name', '?')}"
        count = f"{len(self.done)}/{len(self.terminals)} terminals done"
        if self.dropped:
            count += f" · {len(self.dropped)} dropped: " + _names(f"{n} ({r})" for n, r in self.dropped.items())
        if self.away_since is not None:
            return (f"{head} · tracker unreachable since {clock_time(self.away_since[1])} "
                    f"({int(now - self.away_since[0])} s of {self.tracker_grace} s grace): {self.away_error} · {count}")
        size = status.get("image_size") or 0
        counted = [t for t in self.terminals.values() if t.name not in self.dropped]
        total = size * len(counted)
        held = sum(size if t.name in self.done else (t.held or 0) for t in counted)
        rate = status.get("totals", {}).get("download_rate", 0)
        line = (f"{head} {100 * held / total if total else 100:5.1f} % · {count} · {mib(held)} of {mib(total)} · "
                f"↓ {mib(rate)}/s · ETA {_eta((total - held) / rate if rate else None)} · "
                f"{int(now - self.started)} s")
        unheard = [t.name for t in counted if t.name not in self.done and (t.row is None or t.row.get("state") in ("silent", "stopped"))]
        if unheard:
            line += f" · not heard from: {_names(unheard)}"
        return line

    # -- the rules ------------------------------------------------------------------------------
    def _effective(self, now):
        """``now`` on the clock the drop and stall rules use: it stands still while the
        tracker is away."""
        frozen = now - self.away_since[0] if self.away_since is not None else 0.0
        return now - self.paused - frozen

    def _drop(self, now, t):
        events = []
        waited = now - self.started
        current = rows_by_host(self.status)
        for term in self.terminals.values():
            if not self.drop_after or term.name in self.done or term.name in self.dropped:
                continue
            row = current.get(term.name)
            # A failure reported before the wait began is an earlier run's: it waits like silence.
            if row is not None and row.get("state") == "failed" and row.get("seen_ago", 0) <= waited:
                self._dropped(term, self._reason(term, t), events)
                continue
            if t - term.moved <= self.drop_after:
                continue
            others = any(o is not term and o.name not in self.dropped and t - o.moved <= self.drop_after
                         for o in self.terminals.values())
            if self.done or others:
                self._dropped(term, self._reason(term, t), events)
        return events

    def _dropped(self, term, reason, events):
        self.dropped[term.name] = reason
        events.append(f"{term.name} dropped from the wait: {reason}")

    def _reason(self, term, t):
        row = term.row
        if row is None:
            return "never announced"
        at = percent(row.get("progress", 0.0))
        when = clock_time(row.get("last_seen", 0))
        state = row.get("state")
        if state == "failed":
            return f"failed at {at} ({when}): {row.get('error')}"
        if state == "stopped":
            return f"stopped at {at} ({when})"
        if state == "silent" or rows_by_host(self.status).get(term.name) is None:
            return f"silent since {at} ({when})"
        return f"no progress since {at} for {int(t - term.moved)} s"

    def _what_went_away(self, waiting, t):
        origins = [row for row in self.status.get("peers", []) if row.get("origin")]
        at = sorted({percent(self.terminals[n].row.get("progress", 0.0)) for n in waiting
                     if self.terminals[n].row is not None})
        stuck = f"{len(waiting)} terminal{'s' if len(waiting) != 1 else ''} waiting" + \
            (f" at {', '.join(at[:3])}" if at else "")
        if not origins:
            return f"no origin (seeder) on the tracker for this image; {stuck}"
        if all(row.get("state") in ("silent", "stopped", "failed") for row in origins):
            gone = "; ".join(_origin_gone(row) for row in origins)
            return f"{gone}; {stuck}"
        seeding = ", ".join(row.get("host") or row.get("ip") for row in origins if row.get("state") == "seeding")
        reasons = _names(f"{n} ({self._reason(self.terminals[n], t)})" for n in waiting)
        return f"the origin {seeding} is seeding and the tracker answers; waiting for {reasons}"


def _where(row):
    return None if row is None else (row.get("ip"), row.get("port"))


def _origin_gone(row):
    name = row.get("host") or row.get("ip")
    where = f"the origin {name} ({row.get('ip')})"
    when = clock_time(row.get("last_seen", 0))
    state = row.get("state")
    if state == "failed":
        return f"{where} failed at {when}: {row.get('error')}"
    return f"{where} {'stopped' if state == 'stopped' else 'went silent'} at {when}"
