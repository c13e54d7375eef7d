"""Parsing of the strings the CRDs use instead of floats: decimals, durations, quantities.

Kubernetes API conventions keep floats out of spec; thresholds travel as decimal strings
("0.85"), durations as "150ms", and resources as quantities ("512Mi"). These are the only
conversions between those strings and numbers, shared by the models and the webhooks.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

#: A probability-like threshold in [0, 1] with at most three decimals.
UNIT_DECIMAL_PATTERN = r"^(0(\.[0-9]{1,3})?|1(\.0{1,3})?)$"
#: A duration such as "150ms", "2s" or "1.5s".
DURATION_PATTERN = r"^[0-9]+(\.[0-9]+)?(ms|s|m)$"

_DURATION = re.compile(DURATION_PATTERN)
#: A Kubernetes quantity restricted to the suffixes the operator understands.
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")
_UNIT_DECIMAL = re.compile(UNIT_DECIMAL_PATTERN)

_SCALE: dict[str, Decimal] = {
    "": Decimal(1),
    "m": Decimal("0.001"),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
}


def parse_unit_decimal(text: str) -> float:
    """ "0.85" -> 0.85; raises ValueError outside [0, 1] or with more than three decimals."""
    if not _UNIT_DECIMAL.match(text):
        raise ValueError(f"{text!r} is not a decimal between 0 and 1 such as '0.85'")
    return float(text)


def parse_duration_ms(text: str) -> float:
    """ "150ms" -> 150.0, "2s" -> 2000.0, "1m" -> 60000.0."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration such as '150ms' or '2s'")
    unit = match.group(2)
    value = float(text[: -len(unit)])
    return value * {"ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def parse_quantity(text: str | int) -> Decimal:
    """A Kubernetes quantity in base units: "512Mi" -> 536870912, "500m" -> 0.5."""
    if isinstance(text, int):
        return Decimal(text)
    match = _QUANTITY.match(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a quantity such as '512Mi', '2Gi' or '500m'")
    try:
        number = Decimal(match.group(1))
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only digits
        raise ValueError(f"{text!r} is not a quantity") from exc
    return number * _SCALE[match.group(2) or ""]


def quantity_mib(text: str | int) -> int:
    """A memory quantity in whole MiB, rounded down: what placement compares."""
    return int(parse_quantity(text) / _SCALE["Mi"])
