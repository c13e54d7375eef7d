"""JSON for the hot path: orjson when present (several times faster both ways), else stdlib.

``loads`` answers exactly what ``json.loads`` would: whatever orjson refuses (NaN literals,
integers past 64 bits, UTF-16 bodies...) is handed to ``json.loads``, so acceptance and error
messages stay the stdlib's while the common case stays fast. Callers must also expect
``RecursionError`` (deeply nested input) and plain ``ValueError`` (integers past
``sys.get_int_max_str_digits``), as from ``json.loads``.

Also the v2 binary tensor extension's packing, used for tritonclient's default binary
inputs and outputs.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from typing import Any


def _std_dumps(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def _std_loads(data: bytes | str) -> Any:
    return json.loads(data)


dumps: Callable[[Any], bytes] = _std_dumps
loads: Callable[[bytes | str], Any] = _std_loads

try:
    import orjson
except ImportError:  # pragma: no cover - orjson is a dependency; stay correct without it
    pass
else:
    _fast_loads = orjson.loads
    _OrjsonError = orjson.JSONDecodeError

    def _loads(data: bytes | str) -> Any:
        try:
            return _fast_loads(data)
        except _OrjsonError:
            return json.loads(data)  # the stdlib's verdict (and message) on what orjson refuses

    dumps = orjson.dumps
    loads = _loads


# --- the v2 binary tensor extension ---------------------------------------------------------
#
# A binary tensor is its elements packed little-endian, row-major; a BYTES element is its
# length as a little-endian uint32, then the bytes. tritonclient sends and asks for tensors
# this way by default, so the router speaks it too.

_PACKED = {"FP32": "<f", "INT32": "<i", "BOOL": "<?"}


def unpack_bytes(raw: bytes, count: int) -> list[bytes]:
    """``count`` BYTES elements from a binary tensor; ValueError says where it breaks."""
    items: list[bytes] = []
    offset = 0
    for index in range(count):
        if offset + 4 > len(raw):
            raise ValueError(f"element {index} has no length prefix (tensor ends at {len(raw)})")
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise ValueError(
                f"element {index} declares {size} bytes but only {len(raw) - offset} remain"
            )
        items.append(raw[offset : offset + size])
        offset += size
    if offset != len(raw):
        raise ValueError(f"{len(raw) - offset} bytes left after {count} elements")
    return items


def pack(datatype: str, data: list[Any]) -> bytes:
    """A JSON output's ``data`` as a binary tensor of ``datatype`` (BYTES, FP32, INT32, BOOL)."""
    if datatype == "BYTES":
        parts = []
        for item in data:
            raw = item.encode() if isinstance(item, str) else bytes(item)
            parts.append(struct.pack("<I", len(raw)) + raw)
        return b"".join(parts)
    return struct.pack(f"<{len(data)}{_PACKED[datatype][1]}", *data)
