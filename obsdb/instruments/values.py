"""Reading single header values without ever raising.

Headers written by acquisition software are full of surprises: numbers written as
strings ('300.0'), blank strings meaning "unknown", cards astropy cannot parse, NaN.
These helpers turn each into a plain Python value or None, and say why in a warning
list the caller passes in.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any

from astropy.io import fits


def raw_value(header: fits.Header, key: str, warnings: list[str] | None = None) -> Any:
    """The value of ``key`` as astropy gives it; None when absent, blank or unreadable.

    Strings are stripped; an empty string, an undefined value (``KEY =`` with nothing)
    and a card astropy cannot parse all give None (the last with a warning).
    """
    try:
        if key not in header:
            return None
        value = header[key]
    except Exception as exc:  # a mangled card: VerifyError, ValueError...
        if warnings is not None:
            warnings.append(f"{key}: unreadable card ({exc})")
        return None
    if isinstance(value, fits.card.Undefined):
        return None
    if isinstance(value, str):
        value = value.strip()
        return value or None
    return value


def first_present(
    header: fits.Header, keys: Iterable[str], warnings: list[str] | None = None
) -> tuple[str | None, Any]:
    """The first of ``keys`` with a value: ``(key, value)``, or ``(None, None)``."""
    for key in keys:
        value = raw_value(header, key, warnings)
        if value is not None:
            return key, value
    return None, None


def as_float(value: Any) -> float | None:
    """A finite float from a number or a numeric string ('300', '2.6 e-/ADU' is not)."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        text = value.strip().replace("D", "E").replace("d", "e")
        try:
            number = float(text)
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def as_int(value: Any) -> int | None:
    """An integer from an int, an integral float or a numeric string."""
    number = as_float(value)
    if number is None or number != int(number):
        return None
    return int(number)


def as_text(value: Any) -> str | None:
    """A stripped string, None when blank; numbers become their text."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "T" if value else "F"
    text = str(value).strip()
    return text or None


def card_decimals(header: fits.Header, key: str) -> int | None:
    """Digits after the decimal point as written in the card (exponents counted).

    ``2458405.6298842593`` gives 10, ``2.4584056298842593E+06`` also 10,
    ``58405.1`` gives 1, ``58405`` gives 0. None when the card is not a plain number.
    """
    try:
        image = header.cards[key].image
    except Exception:
        return None
    match = re.search(r"=\s*'?\s*([-+]?)(\d*)(?:\.(\d*))?(?:[EeDd]([-+]?\d+))?\s*'?\s*(?:/|$)", image)
    if match is None or not (match.group(2) or match.group(3)):
        return None
    decimals = len(match.group(3) or "")
    if match.group(4):
        decimals -= int(match.group(4))
    return max(decimals, 0)


def describe(key: str, value: Any) -> str:
    """``KEY='value'`` or ``KEY=value`` for messages, as the header shows it."""
    if isinstance(value, str):
        return f"{key}={value!r}"
    return f"{key}={value}"
