"""Origin stripes (policy O4): the tracker hands each origin downloader its share of the pieces."""

import dataclasses

import pytest

from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine import stripes
from test_tracker_state import HASH, SIZE, announce, make


def residues_of(response):
    parsed = stripes.parse(response["tracker id"])
    return set() if parsed is None else set(parsed[1])


@pytest.mark.parametrize("count, residues", [(4, {2}), (8, {0, 3, 7}), (1, {0})])
def test_a_stripe_reads_back_as_it_was_handed(count, residues):
    assert stripes.parse(stripes.tracker_id(count, residues)) == (count, frozenset(residues))


@pytest.mark.parametrize("text", [stripes.NONE, "", "abc", None, stripes.PREFIX + "1/0", stripes.PREFIX + "4/4",
                                  stripes.PREFIX + "/4", stripes.PREFIX + "1,x/4", stripes.PREFIX + "2", 7])
def test_any_other_tracker_id_is_no_stripe(text):
    assert stripes.parse(text) is None


def test_a_stripe_puts_its_pieces_first_and_no_stripe_puts_them_back():
    assert stripes.priorities(6, (3, frozenset({1}))) == [4, 7, 4, 4, 7, 4]
    assert stripes.priorities(3, None) == [4, 4, 4]


def test_free_indices_are_dealt_to_the_holders_in_turn():
    dealt = stripes.assign(["a", "c"], {"a": 0, "c": 2}, 6)
    assert dealt == {"a": frozenset({0, 1, 4}), "c": frozenset({2, 3, 5})}
    # Indices held by holders not yet settled are not dealt out.
    assert stripes.assign(["a"], {"a": 0, "b": 1}, 3, taken={0, 1}) == {"a": frozenset({0, 2})}
    assert stripes.index_for({"a": 0, "c": 2}, 4) == 1
    assert stripes.index_for({"a": 0, "b": 1}, 2) is None


def test_the_origins_downloaders_ask_it_for_every_piece_once_between_them():
    tracker, clock = make(bridges=0, origin_fanout=4)
    tracker.config = dataclasses.replace(tracker.config, min_interval=3)
    announce(tracker, clock, "10.0.0.1", b"origin", 0, "started")
    responses = {n: announce(tracker, clock, f"10.1.0.{n}", b"p%d" % n, SIZE, "started") for n in range(2, 8)}
    holders = {n: residues_of(r) for n, r in responses.items() if residues_of(r)}
    assert len(holders) == 4 and sorted(i for r in holders.values() for i in r) == [0, 1, 2, 3]
    assert all(len(r) == 1 for r in holders.values())
    others = [r for n, r in responses.items() if n not in holders]
    assert [r["tracker id"] for r in others] == [stripes.NONE, stripes.NONE]
    # A holder hears back at min_interval, so that its stripe follows the slots.
    assert {responses[n]["interval"] for n in holders} == {3} and {r["interval"] for r in others} == {10}
    rows = {row["ip"]: row["stripe"] for row in tracker.swarms[HASH].status(clock(), 5000.0)["peers"]}
    assert sorted(i for i in rows.values() if i is not None) == [0, 1, 2, 3]


def test_a_freed_stripe_goes_to_the_next_holder_and_a_lone_holder_gets_the_rest_once_settled():
    tracker, clock = make(bridges=0, origin_fanout=3)
    announce(tracker, clock, "10.0.0.1", b"origin", 0, "started")
    first = announce(tracker, clock, "10.1.0.2", b"a", SIZE, "started")
    assert residues_of(first) == {0}          # the other slots fill within seconds
    clock.now += 10
    assert residues_of(announce(tracker, clock, "10.1.0.2", b"a", SIZE - 10)) == {0, 1, 2}
    second = announce(tracker, clock, "10.1.0.3", b"b", SIZE, "started")
    assert residues_of(second) == {1}
    assert residues_of(announce(tracker, clock, "10.1.0.2", b"a", SIZE - 20)) == {0, 2}
    # The first completes: its slot and index go to the next downloader that announces.
    announce(tracker, clock, "10.1.0.2", b"a", 0, "completed")
    assert residues_of(announce(tracker, clock, "10.1.0.4", b"c", SIZE, "started")) == {0}


def test_with_stripes_off_the_tracker_says_nothing_of_them():
    tracker, clock = make(bridges=0, stripes=False)
    announce(tracker, clock, "10.0.0.1", b"origin", 0, "started")
    response = announce(tracker, clock, "10.1.0.2", b"a", SIZE, "started")
    assert "tracker id" not in response and response["interval"] == 10


def test_stripes_must_be_true_or_false():
    with pytest.raises(Exception, match=r"^policy\.stripes: must be true or false, got 'yes'$"):
        make(stripes="yes")


def test_a_fetch_follows_its_trackers_word_and_sets_priorities_only_when_it_changes():
    said = stripes.tracker_id(2, {1})
    trackers = [{"url": "http://other/announce", "trackerid": ""}, {"url": "http://t/announce", "trackerid": said}]
    assert stripes.follow(trackers, None, 4) == (said, [4, 7, 4, 7])
    assert stripes.follow(trackers, said, 4) == (said, None)
    # Told "none" after a stripe: the default priorities come back; "none" from the start changes nothing.
    none = [{"trackerid": stripes.NONE}]
    assert stripes.follow(none, said, 4) == (stripes.NONE, [4, 4, 4, 4])
    assert stripes.follow(none, None, 4) == (stripes.NONE, None)
    # A tracker that is not ours (an opaque id, or none at all) is not followed.
    assert stripes.follow([{"trackerid": "abc"}], None, 4) == (None, None)
    assert stripes.follow([], said, 4) == (said, None)
