"""JSON for the hot path: orjson when present (several times faster both ways), else stdlib.

``loads`` answers exactly what ``json.loads`` would: whatever orjson refuses (NaN literals,
integers past 64 bits, UTF-16 bodies...) is handed to ``json.loads``, so acceptance and error
messages stay the stdlib's while the common case stays fast.
"""

from __future__ import annotations

import json
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
