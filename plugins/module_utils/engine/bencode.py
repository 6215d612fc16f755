"""Bencoding (BEP 3): strict decoder and canonical encoder.

Strict because the tracker decodes bytes from the network and metainfo decodes files an
administrator hands us: anything that is not canonical bencoding is rejected with
``BencodeError`` instead of being guessed at.
"""

MAX_DEPTH = 64


class BencodeError(ValueError):
    """The bytes are not valid bencoding."""


def encode(value) -> bytes:
    out = []
    _encode(value, out)
    return b"".join(out)


def _encode(value, out):
    if isinstance(value, bool):
        raise BencodeError("booleans have no bencoding")
    if isinstance(value, int):
        out.append(b"i%de" % value)
    elif isinstance(value, (bytes, bytearray, memoryview)):
        value = bytes(value)
        out.append(b"%d:" % len(value))
        out.append(value)
    elif isinstance(value, str):
        _encode(value.encode("utf-8"), out)
    elif isinstance(value, (list, tuple)):
        out.append(b"l")
        for item in value:
            _encode(item, out)
        out.append(b"e")
    elif isinstance(value, dict):
        out.append(b"d")
        keys = {}
        for key in value:
            if isinstance(key, str):
                raw = key.encode("utf-8")
            elif isinstance(key, (bytes, bytearray)):
                raw = bytes(key)
            else:
                # bytes(5) would silently become five NUL bytes.
                raise BencodeError(f"dictionary key must be a string, not {type(key).__name__}")
            if raw in keys:
                raise BencodeError(f"duplicate dictionary key {raw!r}")
            keys[raw] = key
        for raw in sorted(keys):
            _encode(raw, out)
            _encode(value[keys[raw]], out)
        out.append(b"e")
    else:
        raise BencodeError(f"cannot bencode {type(value).__name__}")


def decode(data: bytes):
    """Decode exactly one value that spans all of ``data``. Strings stay ``bytes``."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise BencodeError("bencoded data must be bytes")
    data = bytes(data)
    value, end = _decode(data, 0, 0)
    if end != len(data):
        raise BencodeError(f"trailing data after offset {end}")
    return value


def decode_prefix(data: bytes):
    """Decode one value at the start of ``data``; return ``(value, end_offset)``."""
    return _decode(bytes(data), 0, 0)


def _decode(data, pos, depth):
    if depth > MAX_DEPTH:
        raise BencodeError("nesting too deep")
    if pos >= len(data):
        raise BencodeError("unexpected end of data")
    lead = data[pos:pos + 1]
    if lead == b"i":
        end = data.find(b"e", pos + 1)
        if end < 0:
            raise BencodeError("unterminated integer")
        digits = data[pos + 1:end]
        if not _canonical_int(digits):
            raise BencodeError(f"invalid integer {digits[:32]!r}")
        return int(digits), end + 1
    if lead == b"l":
        items, pos = [], pos + 1
        while data[pos:pos + 1] != b"e":
            item, pos = _decode(data, pos, depth + 1)
            items.append(item)
        return items, pos + 1
    if lead == b"d":
        result, pos, last = {}, pos + 1, None
        while data[pos:pos + 1] != b"e":
            if pos >= len(data):
                raise BencodeError("unterminated dictionary")
            key, pos = _decode(data, pos, depth + 1)
            if not isinstance(key, bytes):
                raise BencodeError("dictionary key is not a string")
            if last is not None and key <= last:
                raise BencodeError("dictionary keys not sorted or duplicated")
            last = key
            result[key], pos = _decode(data, pos, depth + 1)
        return result, pos + 1
    if lead.isdigit():
        colon = data.find(b":", pos)
        if colon < 0 or colon - pos > 12:
            raise BencodeError("invalid string length")
        digits = data[pos:colon]
        if not digits.isdigit() or (len(digits) > 1 and digits[:1] == b"0"):
            raise BencodeError(f"invalid string length {digits[:16]!r}")
        start = colon + 1
        end = start + int(digits)
        if end > len(data):
            raise BencodeError("string runs past end of data")
        return data[start:end], end
    raise BencodeError(f"unexpected byte {lead!r} at offset {pos}")


def _canonical_int(digits: bytes) -> bool:
    body = digits[1:] if digits[:1] == b"-" else digits
    if not body.isdigit() or len(body) > 40:
        return False
    if body[:1] == b"0" and (len(body) > 1 or digits[:1] == b"-"):
        return False
    return True
