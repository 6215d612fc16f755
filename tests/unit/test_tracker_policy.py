"""The tracker's topology policy (engine/tracker/policy.py): one test per rule, named by it."""
import random
from dataclasses import dataclass

import pytest

from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.tracker import config
from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.tracker.policy import View, choose_bridges, linked, select_peers


@dataclass(eq=False)
class P:
    key: str
    group: object
    left: int = 100
    site_seeder: bool = False
    listening: bool = True


def topology(**policy):
    raw = {"allowed_networks": ["0.0.0.0/0"],
           "groups": {"room1": {"networks": ["10.1.0.0/24"]}, "room2": {"networks": ["10.2.0.0/24"]},
                      "room3": {"networks": ["10.3.0.0/24"]}},
           "policy": policy}
    return config.parse(raw).topology


def swarm(**sizes):
    return {g: [P(f"{g}-{i}", g) for i in range(n)] for g, n in sizes.items()}


def keys(peers):
    return {p.key for p in peers}


class Fleet:
    """Announces in turn, applying each decision as the tracker's Swarm does."""

    def __init__(self, topo, groups, origins=()):
        self.topo, self.groups, self.origins = topo, groups, list(origins)
        self.assignments, self.bridges = {}, {}

    def announce(self, peer, numwant=50, seed=0):
        if peer not in self.origins:
            before = self.bridges.get(peer.group, ())
            after = choose_bridges(self.groups.get(peer.group, ()), before, peer, self.topo)
            self.bridges[peer.group] = after
            for dropped in (p for p in before if p not in after):
                for assigned in self.assignments.values():
                    assigned.discard(dropped)
        view = View(self.groups, self.origins, self.assignments, self.bridges)
        decision = select_peers(peer, view, self.topo, numwant, random.Random(seed))
        if decision.assigned is not None:
            self.assignments.setdefault(decision.assigned.key, set()).add(peer)
        return decision

    def leave(self, peer):
        self.groups[peer.group].remove(peer)
        for assigned in self.assignments.values():
            assigned.discard(peer)


# -- B1: bridges ----------------------------------------------------------------------------
def test_b1_the_first_announcers_of_a_downloading_group_become_its_bridges():
    fleet = Fleet(topology(bridges=2), swarm(room1=5))
    room = fleet.groups["room1"]
    roles = [fleet.announce(p).role for p in room]
    assert roles == ["bridge", "bridge", "member", "member", "member"]
    assert fleet.bridges["room1"] == (room[0], room[1])
    assert fleet.announce(room[0]).role == "bridge"          # a bridge stays one


@pytest.mark.parametrize("how", ["completes", "leaves"])
def test_b1_a_bridge_that_completes_or_leaves_is_replaced_at_the_next_announce(how):
    fleet = Fleet(topology(bridges=1), swarm(room1=3, room2=1))
    room = fleet.groups["room1"]
    for p in room:
        fleet.announce(p)
    assert fleet.bridges["room1"] == (room[0],)
    first, last = room[0], room[2]
    if how == "leaves":
        fleet.leave(first)
        assert fleet.announce(last).role == "bridge"
        assert fleet.bridges["room1"] == (last,)
    else:
        first.left = 0                                       # B2 then: it is the gateway
        assert fleet.announce(last).role == "member"
        assert fleet.bridges["room1"] == (first,)


def test_b1_a_downloading_site_seeder_is_bridge_before_the_peer_announcing():
    groups = swarm(site2=3)
    cache = groups["site2"][2]
    cache.site_seeder = True
    fleet = Fleet(topology(bridges=1), groups)
    assert fleet.announce(groups["site2"][0]).role == "member"
    assert fleet.bridges["site2"] == (cache,)


def test_b1_a_group_may_have_its_own_number_of_bridges():
    raw = {"allowed_networks": ["0.0.0.0/0"], "policy": {"bridges": 3},
           "groups": {"room1": {"networks": ["10.1.0.0/24"]}, "site2": {"networks": ["10.2.0.0/24"], "bridges": 1}}}
    fleet = Fleet(config.parse(raw).topology, swarm(room1=4, site2=4))
    for p in fleet.groups["room1"] + fleet.groups["site2"]:
        fleet.announce(p)
    assert len(fleet.bridges["room1"]) == 3 and len(fleet.bridges["site2"]) == 1


# -- B2: gateways ---------------------------------------------------------------------------
def test_b2_a_group_holding_a_complete_peer_has_no_bridges_only_gateways():
    groups = swarm(room1=4)
    done, site = groups["room1"][3], groups["room1"][2]
    done.left = site.left = 0
    site.site_seeder = True
    fleet = Fleet(topology(bridges=1), groups, [P("origin", None, 0)])
    decision = fleet.announce(groups["room1"][0])
    assert decision.role == "member" and decision.assigned is None
    assert fleet.bridges["room1"] == (site,)                 # site seeders first
    assert fleet.announce(site).role == "gateway"


# -- B3: only bridges look outside ----------------------------------------------------------
def test_b3_only_bridges_are_told_about_other_groups_and_only_about_their_bridges():
    fleet = Fleet(topology(bridges=1, other_group_peers=5), swarm(room1=4, room2=4, room3=4))
    for group in ("room1", "room2", "room3"):
        for p in fleet.groups[group]:
            fleet.announce(p)
    bridge, member = fleet.groups["room1"][0], fleet.groups["room1"][1]
    outside = [p for p in fleet.announce(bridge).peers if p.group != "room1"]
    assert keys(outside) == {"room2-0", "room3-0"}
    assert all(p.group == "room1" for p in fleet.announce(member).peers)
    # no peer of room2 but its bridge is ever handed outside room2
    for p in fleet.groups["room1"] + fleet.groups["room3"]:
        assert not keys(fleet.announce(p).peers) & {"room2-1", "room2-2", "room2-3"}


def test_b3_other_group_peers_caps_what_a_bridge_gets_and_comes_first():
    topo = topology(bridges=3, other_group_peers=2)
    fleet = Fleet(topo, swarm(room1=3, room2=3, room3=3))
    for group in ("room2", "room3", "room1"):
        for p in fleet.groups[group]:
            fleet.announce(p)
    decision = fleet.announce(fleet.groups["room1"][0], numwant=3)
    assert decision.counts["other groups"] == 2
    assert sum(p.group != "room1" for p in decision.peers) == 2


# -- O1-O3: the origin ----------------------------------------------------------------------
def test_o1_o2_only_bridges_get_the_origin_at_most_fanout_and_the_origin_only_them():
    origin = P("origin", None, left=0)
    fleet = Fleet(topology(bridges=3, origin_fanout=2), swarm(room1=6), [origin])
    got = [p for p in fleet.groups["room1"] if origin in fleet.announce(p).peers]
    assert got == fleet.groups["room1"][:2]                  # fanout 2; the third bridge waits
    assert origin not in fleet.announce(fleet.groups["room1"][4]).peers
    assert keys(fleet.announce(origin).peers) == {"room1-0", "room1-1"}
    assert origin in fleet.announce(fleet.groups["room1"][0]).peers   # kept


def test_o2_a_bridge_that_stops_being_one_gives_its_origin_slot_back():
    origin = P("origin", None, left=0)
    fleet = Fleet(topology(bridges=1, origin_fanout=1), swarm(room1=2, room2=2), [origin])
    first = fleet.groups["room1"][0]
    assert fleet.announce(first).assigned is origin
    waiting = fleet.groups["room2"][0]
    assert origin not in fleet.announce(waiting).peers       # the only slot is room1's
    fleet.groups["room1"][1].left = 0                        # room1 now holds the image
    fleet.announce(fleet.groups["room1"][1])
    assert fleet.assignments["origin"] == set()
    assert fleet.announce(waiting).assigned is origin


def test_o3_every_group_holds_an_origin_slot_before_any_holds_two():
    origin = P("origin", None, left=0)
    fleet = Fleet(topology(bridges=2, origin_fanout=3), swarm(room1=2, room2=2, room3=2), [origin])
    order = [fleet.groups["room1"][0], fleet.groups["room2"][0], fleet.groups["room1"][1],
             fleet.groups["room3"][0], fleet.groups["room2"][1], fleet.groups["room3"][1]]
    assigned = [p.key for p in order if fleet.announce(p).assigned is origin]
    # room1's second bridge waits while room3 (downloading, holding no slot) has none
    assert assigned == ["room1-0", "room2-0", "room3-0"]


# -- L1: not listening yet -----------------------------------------------------------------
def test_l1_a_peer_in_its_local_phase_is_handed_to_nobody_and_is_no_bridge():
    groups = swarm(room1=3)
    reading = groups["room1"][0]
    reading.listening = False
    fleet = Fleet(topology(bridges=1), groups, [P("origin", None, left=0)])
    fleet.announce(reading)
    assert fleet.bridges["room1"] == ()
    decision = fleet.announce(groups["room1"][1])
    assert decision.role == "bridge" and keys(decision.peers) == {"origin", "room1-2"}
    reading.listening = True
    assert "room1-0" in keys(fleet.announce(groups["room1"][2]).peers)


# -- B4-B6 ----------------------------------------------------------------------------------
def test_b4_b6_fixed_relation_room2_fetches_only_from_room1_and_the_origin():
    origin = P("origin", None, left=0)
    fleet = Fleet(topology(fetch_from={"room2": ["room1"]}, other_group_peers=5, bridges=1),
                  swarm(room1=3, room2=3, room3=3),
                  [origin])
    decision = fleet.announce(fleet.groups["room2"][0])
    assert keys(decision.peers) == {"origin", "room1-0", "room1-1", "room1-2"}
    for p in fleet.groups["room3"] + fleet.groups["room1"][:1]:
        fleet.announce(p)
    assert not any(p.group == "room2" for p in fleet.announce(fleet.groups["room3"][0]).peers)
    # room2 dials room1 (it is told about all of room1); room1's members look only inside
    assert not any(p.group == "room2" for p in fleet.announce(fleet.groups["room1"][1]).peers)
    assert not linked(fleet.topo, "room2", "room3") and linked(fleet.topo, "room2", "room1")


def test_b5_a_complete_peer_is_told_about_no_complete_peer_and_gets_no_origin():
    groups = swarm(room1=4)
    for p in groups["room1"][:2]:
        p.left = 0
    fleet = Fleet(topology(), groups, [P("origin", None, left=0)])
    decision = fleet.announce(groups["room1"][0])
    assert keys(decision.peers) == {"room1-2", "room1-3"}
    assert decision.assigned is None


def test_ungrouped_peers_are_one_group_with_bridges_of_their_own():
    fleet = Fleet(topology(bridges=1, other_group_peers=1), {None: [P(f"x{i}", None) for i in range(3)],
                                                             "room1": [P("r", "room1")]})
    fleet.announce(fleet.groups["room1"][0])
    assert keys(fleet.announce(fleet.groups[None][0]).peers) == {"x1", "x2", "r"}
    assert keys(fleet.announce(fleet.groups[None][1]).peers) == {"x0", "x2"}


def test_numwant_zero_and_small_numwant_are_honoured():
    origin = P("origin", None, left=0)
    fleet = Fleet(topology(origin_fanout=5), swarm(room1=10), [origin])
    me = fleet.groups["room1"][0]
    assert fleet.announce(me, numwant=0).peers == []
    assert fleet.announce(me, numwant=1).peers == [origin]


def test_same_seed_same_answer_different_seed_spreads():
    fleet = Fleet(topology(), swarm(room1=50))
    me = fleet.groups["room1"][3]
    assert fleet.announce(me, 5, seed=7).peers == fleet.announce(me, 5, seed=7).peers
    seen = set()
    for seed in range(20):
        seen |= keys(fleet.announce(me, 5, seed=seed).peers)
    assert len(seen) > 20


# -- bridges: 0, the policy before bridges --------------------------------------------------
def test_flat_policy_own_group_first_and_a_few_from_other_groups_for_everyone():
    fleet = Fleet(topology(bridges=0, other_group_peers=3), swarm(room1=20, room2=20, room3=20))
    me = fleet.groups["room1"][5]
    decision = fleet.announce(me, numwant=10)
    assert len(decision.peers) == 10 and all(p.group == "room1" for p in decision.peers)
    decision = fleet.announce(me, numwant=30)
    assert sum(p.group == "room1" for p in decision.peers) == 19
    assert sum(p.group != "room1" for p in decision.peers) == 3
    assert fleet.bridges["room1"] == ()


def test_flat_policy_any_downloader_gets_the_origin_up_to_fanout():
    origin = P("origin", None, left=0)
    fleet = Fleet(topology(bridges=0, origin_fanout=2), swarm(room1=3, room2=3), [origin])
    got = [p.key for p in fleet.groups["room2"] + fleet.groups["room1"] if fleet.announce(p).assigned is origin]
    assert got == ["room2-0", "room2-1"]


def test_decision_explains_role_and_counts():
    origin = P("origin", None, left=0)
    fleet = Fleet(topology(), swarm(room1=3), [origin])
    text = fleet.announce(fleet.groups["room1"][0]).explain()
    assert text.startswith("3 peers as bridge: origin=1") and "assigned to an origin" in text
