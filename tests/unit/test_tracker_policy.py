import random
from dataclasses import dataclass

from engine.tracker import config
from engine.tracker.policy import linked, select_peers


@dataclass(eq=False)
class P:
    key: str
    group: object
    left: int = 100


def topology(**policy):
    raw = {"allowed_networks": ["0.0.0.0/0"],
           "groups": {"room1": {"networks": ["10.1.0.0/24"]}, "room2": {"networks": ["10.2.0.0/24"]},
                      "room3": {"networks": ["10.3.0.0/24"]}},
           "policy": policy}
    return config.parse(raw).topology


def swarm(**sizes):
    groups = {g: [P(f"{g}-{i}", g) for i in range(n)] for g, n in sizes.items()}
    return groups


def keys(peers):
    return {p.key for p in peers}


def test_own_group_first_and_only_a_few_from_other_groups():
    topo = topology(other_group_peers=3)
    groups = swarm(room1=20, room2=20, room3=20)
    me = groups["room1"][0]
    decision = select_peers(me, groups, [], {}, topo, 10, random.Random(1))
    assert len(decision.peers) == 10
    assert all(p.group == "room1" for p in decision.peers)
    assert me not in decision.peers

    decision = select_peers(me, groups, [], {}, topo, 30, random.Random(1))
    assert sum(p.group == "room1" for p in decision.peers) == 19
    assert sum(p.group != "room1" for p in decision.peers) == 3


def test_same_seed_same_answer_different_seed_spreads():
    topo = topology()
    groups = swarm(room1=50)
    me = groups["room1"][0]
    first = select_peers(me, groups, [], {}, topo, 5, random.Random(7)).peers
    again = select_peers(me, groups, [], {}, topo, 5, random.Random(7)).peers
    assert first == again
    seen = set()
    for seed in range(20):
        seen |= keys(select_peers(me, groups, [], {}, topo, 5, random.Random(seed)).peers)
    assert len(seen) > 20


def test_origin_seeder_is_handed_to_a_bounded_number_of_peers():
    topo = topology(origin_fanout=2)
    groups = swarm(room1=6)
    origin = P("origin", None, left=0)
    assignments = {}
    got_origin = []
    for peer in groups["room1"]:
        decision = select_peers(peer, groups, [origin], assignments, topo, 50, random.Random(0))
        if decision.assigned is not None:
            assignments.setdefault(decision.assigned.key, set()).add(peer)
        if origin in decision.peers:
            got_origin.append(peer)
    assert got_origin == groups["room1"][:2]

    # An assigned downloader keeps getting the origin on its next announce; nobody else does.
    assigned, other = groups["room1"][0], groups["room1"][5]
    assert origin in select_peers(assigned, groups, [origin], assignments, topo, 50, random.Random(0)).peers
    again = select_peers(other, groups, [origin], assignments, topo, 50, random.Random(0))
    assert origin not in again.peers and again.assigned is None

    # The origin itself is told only about its assigned downloaders.
    decision = select_peers(origin, groups, [origin], assignments, topo, 50, random.Random(0))
    assert keys(decision.peers) == {"room1-0", "room1-1"}

    # When an assigned downloader leaves, the next downloader takes its place.
    assignments["origin"].discard(assigned)
    decision = select_peers(other, groups, [origin], assignments, topo, 50, random.Random(0))
    assert decision.assigned is origin and origin in decision.peers


def test_complete_peer_gets_no_origin_and_no_other_complete_peers():
    topo = topology()
    groups = swarm(room1=4)
    for p in groups["room1"][:2]:
        p.left = 0
    origin = P("origin", None, left=0)
    me = groups["room1"][0]
    decision = select_peers(me, groups, [origin], {}, topo, 50, random.Random(0))
    assert keys(decision.peers) == {"room1-2", "room1-3"}
    assert decision.assigned is None


def test_fixed_relation_room2_fetches_only_from_room1_and_the_seeder():
    topo = topology(fetch_from={"room2": ["room1"]}, other_group_peers=5)
    groups = swarm(room1=3, room2=3, room3=3)
    origin = P("origin", None, left=0)
    me = groups["room2"][0]
    decision = select_peers(me, groups, [origin], {}, topo, 50, random.Random(0))
    assert keys(decision.peers) == {"origin", "room1-0", "room1-1", "room1-2"}

    # Nobody outside room1 is told about room2 either, so room3 cannot connect to it.
    room3 = select_peers(groups["room3"][0], groups, [], {}, topo, 50, random.Random(0))
    assert not any(p.group == "room2" for p in room3.peers)
    room1 = select_peers(groups["room1"][0], groups, [], {}, topo, 50, random.Random(0))
    assert sum(p.group == "room2" for p in room1.peers) == 3
    assert not linked(topo, "room2", "room3") and linked(topo, "room2", "room1")


def test_ungrouped_peers_form_their_own_group():
    topo = topology(other_group_peers=1)
    groups = {None: [P(f"x{i}", None) for i in range(3)], "room1": [P("r", "room1")]}
    decision = select_peers(groups[None][0], groups, [], {}, topo, 50, random.Random(0))
    assert keys(decision.peers) == {"x1", "x2", "r"}


def test_numwant_zero_and_small_numwant_are_honoured():
    topo = topology(origin_fanout=5)
    groups = swarm(room1=10)
    origin = P("origin", None, left=0)
    me = groups["room1"][0]
    assert select_peers(me, groups, [origin], {}, topo, 0, random.Random(0)).peers == []
    decision = select_peers(me, groups, [origin], {}, topo, 1, random.Random(0))
    assert decision.peers == [origin]
