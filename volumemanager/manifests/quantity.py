"""Kubernetes resource quantities ("64Mi", "1.5Gi", "500M", "1e3") as a whole number of bytes.

The grammar is Kubernetes' (``k8s.io/apimachinery/pkg/api/resource``)::

    <quantity> ::= <sign><digits>[.<digits>]<suffix>
    <suffix>   ::= Ki | Mi | Gi | Ti | Pi | Ei          (binary, powers of 1024)
                 | m | "" | k | M | G | T | P | E       (decimal SI)
                 | e<signed int> | E<signed int>         (decimal exponent)

Arithmetic is exact (``fractions.Fraction``) and a fractional byte count is rounded *up*, as
Kubernetes' ``Quantity.Value()`` does. Sizes are never negative here, and anything above what
an int64 holds is refused, as is an exponent so large that computing it would be a denial of
service ("1e999999999").
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

MAX_BYTES = 2**63 - 1  # Kubernetes stores quantities as int64
MAX_TEXT = 64  # no legitimate quantity is longer; bounds the work done on hostile input
MAX_EXPONENT = 30  # 10**30 is already far above MAX_BYTES; larger exponents are refused early

_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_QUANTITY_RE = re.compile(
    r"(?P<sign>[+-]?)(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
    r"(?:(?P<binary>Ki|Mi|Gi|Ti|Pi|Ei)|[eE](?P<exp>[+-]?[0-9]+)|(?P<decimal>[mkMGTPE]?))"
)


def parse_quantity(value: object) -> int:
    """The number of bytes ``value`` stands for.

    Accepts a string in the grammar above, or an int (YAML ``sizeLimit: 1024``). Raises
    ``ValueError`` with a message that says what is wrong otherwise.
    """
    number, shown = _parse(value)
    return _checked(number, shown)


def parse_quantity_exact(value: object) -> Fraction:
    """The exact value of ``value`` (cpu "500m" is 1/2), not negative and at most int64: for
    resources that are not byte counts (container cpu, a downward API divisor)."""
    number, shown = _parse(value)
    if number < 0:
        raise ValueError(f"{shown} must not be negative")
    if number > MAX_BYTES:
        raise ValueError(f"{shown} is too large")
    return number


def _parse(value: object) -> tuple[Fraction, str]:
    if isinstance(value, bool):
        raise ValueError("must be a quantity such as '64Mi', not a boolean")
    if isinstance(value, int):
        return Fraction(value), repr(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("must be a finite quantity")
        return Fraction(repr(value)), repr(value)
    if not isinstance(value, str):
        raise ValueError(f"must be a quantity such as '64Mi', not {type(value).__name__}")
    text = value.strip()
    if len(text) > MAX_TEXT:
        raise ValueError(f"quantity is too long ({len(text)} characters)")
    match = _QUANTITY_RE.fullmatch(text)
    if not match:
        raise ValueError(
            f"{text!r} is not a quantity: expected a number with an optional suffix "
            "(Ki, Mi, Gi, Ti, Pi, Ei, k, M, G, T, P, E, m or an exponent like e3)"
        )
    number = Fraction(match["number"])
    if match["sign"] == "-":
        number = -number
    if match["binary"]:
        number *= 1024 ** _BINARY[match["binary"]]
    elif match["exp"] is not None:
        exponent = int(match["exp"])
        if abs(exponent) > MAX_EXPONENT:
            raise ValueError(f"{text!r}: exponent {exponent} is out of range")
        number *= Fraction(10) ** exponent
    else:
        number *= Fraction(10) ** _DECIMAL[match["decimal"] or ""]
    return number, repr(text)


def _checked(number: Fraction, shown: str) -> int:
    if number < 0:
        raise ValueError(f"{shown} must not be negative")
    result = math.ceil(number)
    if result > MAX_BYTES:
        raise ValueError(f"{shown} is too large (more than {MAX_BYTES} bytes)")
    return result


def format_bytes(n: int) -> str:
    """The shortest exact binary-suffixed rendering of ``n`` ("64Mi"), for messages."""
    for suffix, power in sorted(_BINARY.items(), key=lambda kv: -kv[1]):
        unit = 1024**power
        if n and n % unit == 0:
            return f"{n // unit}{suffix}"
    return str(n)
