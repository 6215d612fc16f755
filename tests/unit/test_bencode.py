"""Bencoding: canonical out, strict in (the tracker decodes bytes straight off the network)."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine import bencode
from ansible_collections.p2pfleet.imaging.plugins.module_utils.engine.bencode import BencodeError, decode, encode


@pytest.mark.parametrize("value, raw", [
    (0, b"i0e"),
    (-42, b"i-42e"),
    (2 ** 70, b"i1180591620717411303424e"),
    (b"", b"0:"),
    (b"spam", b"4:spam"),
    ([], b"le"),
    ({}, b"de"),
    ([1, b"a", [b"b"], {b"k": 2}], b"li1e1:al1:bed1:ki2eee"),
    ({b"piece length": 16384, b"name": b"x"}, b"d4:name1:x12:piece lengthi16384ee"),
])
def test_round_trip(value, raw):
    assert encode(value) == raw
    assert decode(raw) == value


def test_keys_are_encoded_sorted_by_raw_bytes_whatever_the_insertion_order():
    assert encode({"b": 1, "a": 2, b"A": 3}) == b"d1:Ai3e1:ai2e1:bi1ee"


def test_str_encodes_as_utf8_and_decodes_as_bytes():
    assert decode(encode({"név": "ő"})) == {"név".encode(): "ő".encode()}


def test_str_and_bytes_spelling_of_one_key_is_refused():
    with pytest.raises(BencodeError, match="duplicate"):
        encode({"a": 1, b"a": 2})


@pytest.mark.parametrize("value", [True, 1.5, None, {1: 2}, {(1, 2): 3}, object()])
def test_values_without_a_bencoding_are_refused(value):
    with pytest.raises(BencodeError):
        encode(value)


@pytest.mark.parametrize("raw, why", [
    (b"i03e", "leading zero"),
    (b"i-0e", "negative zero"),
    (b"i-e", "sign without digits"),
    (b"ie", "empty integer"),
    (b"i+1e", "plus sign"),
    (b"i1", "unterminated integer"),
    (b"03:abc", "leading zero in a string length"),
    (b"5:abc", "truncated string"),
    (b"4spam", "string length without colon"),
    (b"d1:bi1e1:ai2ee", "unsorted keys"),
    (b"d1:ai1e1:ai2ee", "duplicate key"),
    (b"di1ei2ee", "integer key"),
    (b"dlei2ee", "list key"),
    (b"d1:ai1e", "unterminated dictionary"),
    (b"li1e", "unterminated list"),
    (b"i1ei2e", "trailing value"),
    (b"4:spam\n", "trailing newline"),
    (b"", "empty input"),
    (b"x", "unknown type byte"),
    (b"l" * 70 + b"e" * 70, "nesting too deep"),
])
def test_non_canonical_or_broken_input_is_refused(raw, why):
    with pytest.raises(BencodeError):
        decode(raw)


def test_nesting_up_to_the_limit_is_accepted():
    depth = bencode.MAX_DEPTH
    assert decode(b"l" * depth + b"e" * depth) is not None


def test_decode_refuses_text():
    with pytest.raises(BencodeError, match="bytes"):
        decode("i1e")


def test_decode_prefix_reports_where_the_value_ends():
    assert bencode.decode_prefix(b"4:spamGARBAGE") == (b"spam", 6)


values = st.recursive(
    st.integers() | st.binary(max_size=64),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.binary(max_size=16), inner, max_size=5),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(values)
def test_property_encode_then_decode_is_identity(value):
    raw = encode(value)
    assert decode(raw) == value
    assert encode(decode(raw)) == raw


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=200) | values.map(lambda v: encode(v)[:-1] + b"e"))
def test_property_arbitrary_bytes_decode_or_raise_bencode_error(raw):
    try:
        value = decode(raw)
    except BencodeError:
        return
    # Whatever is accepted is canonical: it re-encodes to the very same bytes.
    assert encode(value) == raw
