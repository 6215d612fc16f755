"""Topology policy: which peers a requesting peer is told about.

A pure function of its inputs (the random source is injected), so every rule can be tested
without a network. The rules, in order:

1. The origin seeder is told only about the downloaders currently assigned to it, so it
   does not dial the whole fleet and spread its upload thin.
2. A downloading peer assigned to an origin seeder gets that seeder again; one assigned to
   none is assigned to an origin seeder that has fewer than ``origin_fanout`` assigned
   downloaders. Few at a time means the origin's upload goes to distinct pieces that its
   assigned downloaders then trade onwards, instead of the same first pieces to everybody.
3. Then peers of the requester's own group (or, for a group with a fixed relation, of the
   groups it fetches from), then at most ``other_group_peers`` from other groups.
4. A fixed relation ``X fetches only from Y`` is enforced in both directions: X is never
   told about peers outside Y, and peers outside Y are never told about X.
5. A complete peer is not told about other complete peers: they have nothing to trade.
"""

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Decision:
    peers: list
    assigned: object = None         # the origin seeder the requester was just assigned to
    counts: dict = field(default_factory=dict)

    def explain(self) -> str:
        parts = ", ".join(f"{k}={v}" for k, v in self.counts.items())
        assigned = " (assigned to an origin)" if self.assigned is not None else ""
        return f"{len(self.peers)} peers: {parts}{assigned}"


def linked(topology, group_a, group_b) -> bool:
    """May peers of these two groups be told about each other?"""
    return _may_fetch(topology, group_a, group_b) and _may_fetch(topology, group_b, group_a)


def _may_fetch(topology, group, source) -> bool:
    sources = topology.fetch_from.get(group)
    return sources is None or source in sources


def select_peers(requester, groups, origins, origin_assignments, topology, numwant, rng) -> Decision:
    """Choose up to ``numwant`` peers for ``requester``.

    ``groups`` maps each group (``None`` for ungrouped peers) to its active non-origin peers,
    the requester included; ``origins`` are the active origin seeders; ``origin_assignments``
    maps an origin seeder's key to the set of downloaders assigned to it. Peers have ``key``,
    ``group`` and ``left`` attributes.
    """
    if numwant <= 0:
        return Decision([], counts={"numwant": 0})
    if requester in origins:
        mine = list(origin_assignments.get(requester.key, ()))[:numwant]
        return Decision(mine, counts={"assigned downloaders": len(mine)})

    chosen, assigned = [], None
    if requester.left > 0:
        for origin in origins:
            if requester in origin_assignments.get(origin.key, ()):
                chosen.append(origin)
        if not chosen and origins:
            free = [o for o in origins
                    if len(origin_assignments.get(o.key, ())) < topology.origin_fanout]
            if free:
                assigned = min(free, key=lambda o: len(origin_assignments.get(o.key, ())))
                chosen.append(assigned)
        chosen = chosen[:numwant]
    counts = {"origin": len(chosen)}

    home = topology.fetch_from.get(requester.group, {requester.group})
    preferred, others = [], []
    for group, members in groups.items():
        if not linked(topology, requester.group, group):
            continue
        bucket = preferred if group in home else others
        bucket.extend(p for p in members
                      if p is not requester and (requester.left > 0 or p.left > 0))

    room = numwant - len(chosen)
    take = min(room, len(preferred))
    chosen.extend(rng.sample(preferred, take))
    counts["preferred groups"] = take
    room -= take
    take = min(room, topology.other_group_peers, len(others))
    chosen.extend(rng.sample(others, take))
    counts["other groups"] = take
    return Decision(chosen, assigned=assigned, counts=counts)
