"""Origin stripes: which pieces each downloader of the origin asks it for first.

The origin serves ``origin_fanout`` downloaders at a time. Left to rarest-first, two of
them often ask it for the same piece within the same second, so the origin sends 1.1-1.3
copies before every piece has left it once, and the fleet waits for its last pieces. The
tracker (the one place that knows who holds an origin slot) hands each holder a *stripe*:
a set of residues modulo ``count``; piece ``i`` is in the stripe when ``i % count`` is one of
them. The holder's agent gives those pieces the top priority, so from the origin it asks
for its own stripe, and takes the rest from its peers.

The tracker says it in its announce response's ``tracker id`` (BEP 3: a string the client
keeps and sends back), the only value of a response that libtorrent hands to its client.
A client that is not a p2pfleet agent keeps it as an opaque id; a p2pfleet agent reads it
with ``parse``. A downloader that holds no slot is told ``NONE``, which takes the
priorities back, since a tracker id once set is kept until another replaces it.
"""

PREFIX = "p2pfleet-stripe:"
NONE = PREFIX + "none"
# libtorrent's piece priorities: 4 is the default, 7 the top.
DEFAULT_PRIORITY = 4
STRIPE_PRIORITY = 7


def tracker_id(count, residues) -> str:
    """The ``tracker id`` that hands a holder ``residues`` modulo ``count`` (NONE: none)."""
    if not residues:
        return NONE
    return f"{PREFIX}{','.join(str(r) for r in sorted(residues))}/{count}"


def parse(text):
    """(count, frozenset of residues) from a tracker id; None for NONE or any other id."""
    if not isinstance(text, str) or not text.startswith(PREFIX) or text == NONE:
        return None
    body = text[len(PREFIX):]
    residues, sep, count = body.rpartition("/")
    try:
        count = int(count)
        chosen = frozenset(int(r) for r in residues.split(","))
    except ValueError:
        return None
    if not sep or count < 1 or not chosen or any(not 0 <= r < count for r in chosen):
        return None
    return count, chosen


def priorities(num_pieces, stripe):
    """libtorrent piece priorities for ``stripe`` (from ``parse``; None: all the default)."""
    if stripe is None:
        return [DEFAULT_PRIORITY] * num_pieces
    count, residues = stripe
    return [STRIPE_PRIORITY if i % count in residues else DEFAULT_PRIORITY for i in range(num_pieces)]


def follow(trackers, followed, num_pieces):
    """What a fetch does after a tracker reply: (the tracker id it now follows, the piece
    priorities to set, or None when nothing changes).

    ``trackers`` is libtorrent's list of its trackers (dicts with ``trackerid``),
    ``followed`` the tracker id the fetch followed so far (None: none yet).
    """
    said = next((t.get("trackerid") for t in trackers if str(t.get("trackerid", "")).startswith(PREFIX)), None)
    if said is None or said == followed:
        return followed, None
    stripe = parse(said)
    if stripe is None and parse(followed) is None:
        return said, None           # no stripe before, none now: the priorities stay the default
    return said, priorities(num_pieces, stripe)


def assign(holders, indices, count, taken=None):
    """Each holder's residues: its own index, plus the indices nobody holds, shared out.

    ``holders`` are peers holding an origin slot, ``indices`` maps each to its stable index
    in ``range(count)`` (``index_for`` chose it); ``taken`` are the indices held by anyone,
    ``holders`` or not (default: the holders'). Returns {holder: frozenset}. Free indices
    are dealt to the holders in index order, so that together they ask the origin for every
    piece once even while fewer than ``count`` slots are held.
    """
    ordered = sorted(holders, key=lambda h: indices[h])
    if not ordered:
        return {}
    taken = {indices[h] for h in ordered} if taken is None else set(taken)
    residues = {h: {indices[h]} for h in ordered}
    free = [i for i in range(count) if i not in taken]
    for n, index in enumerate(free):
        residues[ordered[n % len(ordered)]].add(index)
    return {h: frozenset(r) for h, r in residues.items()}


def index_for(indices, count):
    """The lowest index in ``range(count)`` that no holder in ``indices`` has (None: none)."""
    taken = set(indices.values())
    return next((i for i in range(count) if i not in taken), None)
