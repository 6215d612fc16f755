"""Topology policy: which peers a requesting peer is told about.

Pure functions of their inputs (the random source is injected), so every rule can be
tested without a network. A *group* is a room or a site: the peers behind one switch or
one routed link. The aim is that the image crosses each group's uplink about once.

Bridges (``policy.bridges`` per group, default 2 with two or more groups, else 0;
``groups.*.bridges`` for one group):

B1. A group that is still downloading and holds no complete peer has up to ``bridges``
    *bridges*: downloaders that are the only ones of the group told about the origin and
    about other groups. A bridge stays one while it is active and downloading; one that
    completes, stops or goes silent is replaced at the next announce from its group. A
    group's site seeders (``groups.*.seeders``: a site's cache host) are its bridges first,
    before any terminal; other places go to the peer announcing.
B2. A group that holds a complete peer needs no bridge: its downloaders have every piece
    inside. Its first ``bridges`` complete peers (site seeders first) are its *gateways*:
    what other groups' bridges are told about.
B3. A downloading bridge is told about up to ``other_group_peers`` bridges and gateways of
    other groups it is linked to (B6); every other peer is told only about its own group.

Origin seeders (``policy.seeders``):

O1. An origin seeder is told only about the downloaders assigned to it.
O2. Only bridges are assigned to an origin, at most ``origin_fanout`` at a time per origin.
    A bridge assigned keeps getting its origin; the assignment ends when it completes,
    stops, goes silent or stops being a bridge.
O3. Every group that needs the origin holds one of its slots before any group holds a
    second: a bridge of a group that already holds a slot gets another only while more
    slots are free than groups without one.
O4. Each downloader assigned to an origin is handed a *stripe* (``policy.stripes``, default
    on; stripes.py): the pieces it asks the origin for first. The stripes of the assigned
    downloaders are disjoint and, once they have settled, cover every piece, so the origin
    sends each piece about once before any piece twice. The tracker keeps the stripes
    (state.py); this module only says who is assigned.

Always:

L1. A peer that is not listening yet is handed to nobody, is no bridge and gets no origin
    slot: a fetch in its local phase (reading its own disks before its torrent starts)
    announces so the fleet wait sees it alive, but a connection to it now would fail, and
    a peer that failed to connect waits before it tries again. (Its last report may arrive
    after its torrent's first announce; the tracker drops such a late report, state.py.)
B4. Peers of the requester's home are told: its own group, or for a group with a fixed
    relation ``X fetches only from Y``, the groups it fetches from.
B5. A complete peer is not told about other complete peers: they have nothing to trade.
B6. A fixed relation is enforced in both directions: X is never told about peers outside
    Y, and peers outside Y are never told about X.

With ``bridges: 0`` there are no bridges (the policy before 0.3): any downloader may be
assigned to an origin, and every peer is told about up to ``other_group_peers`` peers of
other groups. Kept for comparison in benchmarks/fleet.py and for flat networks.
"""

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Decision:
    peers: list
    assigned: object = None         # the origin seeder the requester was just assigned to
    counts: dict = field(default_factory=dict)
    role: str = "member"

    def explain(self) -> str:
        parts = ", ".join(f"{k}={v}" for k, v in self.counts.items())
        assigned = ", assigned to an origin" if self.assigned is not None else ""
        return f"{len(self.peers)} peers as {self.role}: {parts}{assigned}"


@dataclass(frozen=True)
class View:
    """What the swarm knows at one announce; the policy reads it and changes nothing.

    ``groups`` maps each group (``None`` for ungrouped peers) to its active non-origin
    peers, the requester included; ``origins`` are the active origin seeders;
    ``assignments`` maps an origin seeder's key to the set of downloaders assigned to it;
    ``bridges`` maps a group to its bridges or gateways, as chosen by ``choose_bridges``.
    Peers have ``key``, ``group``, ``left``, ``site_seeder`` and ``listening`` attributes.
    """

    groups: dict
    origins: list = ()
    assignments: dict = field(default_factory=dict)
    bridges: dict = field(default_factory=dict)


def linked(topology, group_a, group_b) -> bool:
    """May peers of these two groups be told about each other?"""
    return _may_fetch(topology, group_a, group_b) and _may_fetch(topology, group_b, group_a)


def _may_fetch(topology, group, source) -> bool:
    sources = topology.fetch_from.get(group)
    return sources is None or source in sources


def choose_bridges(members, current, requester, topology) -> tuple:
    """The bridges (B1) or gateways (B2) of one group after an announce from ``requester``.

    ``members`` are the group's active non-origin peers, ``current`` its bridges or gateways
    so far. Eligible site seeders come first, then the current ones still eligible, in
    order, then the requester. Returns a tuple; () when the policy has no bridges.
    """
    if topology.bridges <= 0:
        return ()
    want = topology.bridges_of(requester.group)
    active = set(members)
    complete = any(p.left == 0 for p in members)

    def eligible(p):
        return p.listening and (p.left == 0 if complete else p.left > 0)

    chosen = []
    for candidate in [p for p in members if p.site_seeder] + list(current) + [requester]:
        if len(chosen) >= want:
            break
        if candidate in active and eligible(candidate) and candidate not in chosen:
            chosen.append(candidate)
    return tuple(chosen)


def select_peers(requester, view, topology, numwant, rng) -> Decision:
    """Choose up to ``numwant`` peers for ``requester`` (rules in the module docstring)."""
    if numwant <= 0:
        return Decision([], counts={"numwant": 0})
    if requester in view.origins:
        mine = list(view.assignments.get(requester.key, ()))[:numwant]
        return Decision(mine, counts={"assigned downloaders": len(mine)}, role="origin")

    flat = topology.bridges <= 0
    bridge = requester in view.bridges.get(requester.group, ())
    role = "member" if flat or not bridge else ("bridge" if requester.left > 0 else "gateway")
    chosen, assigned = [], None
    if requester.left > 0 and requester.listening and (flat or bridge):
        chosen, assigned = _origin(requester, view, topology, flat)
        chosen = chosen[:numwant]
    counts = {"origin": len(chosen)}

    home = topology.fetch_from.get(requester.group, {requester.group})
    inside, outside = [], []
    for group, members in view.groups.items():
        if not linked(topology, requester.group, group):
            continue
        if group in home:
            inside.extend(p for p in members
                          if p is not requester and p.listening and (requester.left > 0 or p.left > 0))
        elif flat:
            outside.extend(p for p in members if p.listening and (requester.left > 0 or p.left > 0))
        elif role == "bridge":
            active = set(members)
            outside.extend(p for p in view.bridges.get(group, ()) if p in active)

    # A bridge's few outside peers come first: they are why it is a bridge. Without
    # bridges, the own group comes first and the rest of the room goes to other groups.
    room = numwant - len(chosen)
    home_label = "own group" if home == {requester.group} else "groups fetched from"
    for label, pool in ((("other groups", outside), (home_label, inside)) if not flat
                        else ((home_label, inside), ("other groups", outside))):
        limit = topology.other_group_peers if pool is outside else room
        take = min(room, limit, len(pool))
        chosen.extend(rng.sample(pool, take))
        counts[label] = take
        room -= take
    return Decision(chosen, assigned=assigned, counts=counts, role=role)


def _origin(requester, view, topology, flat):
    """The origin(s) ``requester`` keeps, or the one it is assigned to now (O2, O3)."""
    mine = [o for o in view.origins if requester in view.assignments.get(o.key, ())]
    if mine or not view.origins:
        return mine, None
    load = {o.key: len(view.assignments.get(o.key, ())) for o in view.origins}
    free = [o for o in view.origins if load[o.key] < topology.origin_fanout]
    if not free:
        return [], None
    if not flat:
        holding = {p.group for o in view.origins for p in view.assignments.get(o.key, ())}
        if requester.group in holding:
            waiting = sum(1 for group, members in view.groups.items()
                          if group not in holding and _needs_origin(members))
            if sum(topology.origin_fanout - load[o.key] for o in free) <= waiting:
                return [], None
    assigned = min(free, key=lambda o: load[o.key])
    return [assigned], assigned


def _needs_origin(members) -> bool:
    """A group needs the origin while it downloads and holds no complete peer (B2)."""
    members = list(members)
    return any(p.left > 0 for p in members) and all(p.left > 0 for p in members)
