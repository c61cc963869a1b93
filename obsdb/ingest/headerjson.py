"""A FITS header as JSON that PostgreSQL's JSONB accepts."""

from __future__ import annotations

import math
from typing import Any

from astropy.io import fits

_LIST_KEYS = {"COMMENT", "HISTORY", ""}


def _json_value(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        # JSON has no NaN or infinity; keep what the header said as text.
        return value if math.isfinite(value) else str(value)
    if isinstance(value, complex):
        return [value.real, value.imag]
    if isinstance(value, fits.card.Undefined):
        return None
    # JSONB rejects NUL characters, which broken writers do put in headers.
    return str(value).replace("\x00", "")


def header_to_json(header: fits.Header) -> dict[str, Any]:
    """Map keyword -> value; COMMENT and HISTORY become lists of strings.

    A keyword repeated in the header (against the standard, but cameras do it) keeps its
    first value, which is what astropy's ``header[key]`` returns too.
    """
    out: dict[str, Any] = {}
    for card in header.cards:
        key = card.keyword
        try:
            value = card.value
        except (ValueError, fits.verify.VerifyError):
            value = card.image.strip()
        if key in _LIST_KEYS:
            out.setdefault(key or "BLANK", []).append(_json_value(value))
        elif key not in out:
            out[key] = _json_value(value)
    return out
