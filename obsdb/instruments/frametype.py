"""What kind of frame a header describes: bias, dark, flat, light or unclassified.

The frame-type keyword decides when it holds a known value. Otherwise the type is
inferred, in this order, and the reason recorded:

1. ``EXPTIME`` = 0: a bias.
2. ``OBJECT`` naming a bias/zero, dark or flat (whole words: 'Bias', 'darks_300s',
   'SkyFlat g').
3. The file name doing the same ('flat-g-001.fits').
4. ``OBJECT`` set, ``EXPTIME`` > 0 and a filter: a light.
5. Otherwise ``unclassified``, with the reason. A frame is never dropped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from obsdb.instruments.keywords import FRAME_TYPE_ALIASES, NAME_HINTS, NON_FRAME_TYPES

IMAGE_TYPES = ("bias", "dark", "flat", "light", "unclassified")


@dataclass(frozen=True)
class FrameType:
    """The frame type and, in words, what it was decided from."""

    imagetyp: str
    source: str


def normalize_type_name(value: str) -> str:
    """Lower case, with runs of blanks, '_' and '-' made one space: 'Flat_Field' -> 'flat field'."""
    return re.sub(r"[\s_\-]+", " ", value.strip().lower()).strip()


def lookup_alias(value: str, aliases: Mapping[str, str]) -> str | None:
    """The obsdb type of a frame-type keyword value, or None when it is not known."""
    return aliases.get(normalize_type_name(value))


def merged_aliases(extra: Mapping[str, str] | None) -> dict[str, str]:
    """The built-in aliases plus a profile's (the profile's win), keys normalised."""
    table = dict(FRAME_TYPE_ALIASES)
    for key, value in (extra or {}).items():
        table[normalize_type_name(key)] = value
    return table


def _words(text: str) -> set[str]:
    return {w for w in re.split(r"[^a-z]+", text.lower()) if w}


def name_hint(text: str | None) -> str | None:
    """'bias', 'dark' or 'flat' when ``text`` contains one of the NAME_HINTS words."""
    if not text:
        return None
    words = _words(text)
    for kind, hints in NAME_HINTS:
        if words & hints:
            return kind
    return None


def classify(
    type_key: str | None,
    type_value: str | None,
    *,
    exptime: float | None,
    object_name: str | None,
    filter_name: str | None,
    filename: str | None,
    aliases: Mapping[str, str] = FRAME_TYPE_ALIASES,
) -> FrameType:
    """Decide the frame type.

    Parameters
    ----------
    type_key, type_value
        The frame-type keyword found (e.g. ``'IMAGETYP'``, ``'Bias Frame'``), or None.
    exptime
        Exposure time in seconds, None when unknown or absurd.
    object_name, filter_name
        OBJECT and the filter, None when blank.
    filename
        The file's name (no directories needed).
    aliases
        Normalised frame-type value -> obsdb type (see :func:`merged_aliases`).
    """
    why_not = ""
    if type_key is not None and type_value is not None:
        shown = f"{type_key}={type_value!r}"
        kind = lookup_alias(type_value, aliases)
        if kind in IMAGE_TYPES:
            return FrameType(kind, shown)
        if normalize_type_name(type_value) in NON_FRAME_TYPES:
            return FrameType("unclassified", f"{shown} is neither a calibration nor a science frame")
        why_not = f"{shown} is not a known frame type; "
    else:
        why_not = "no frame-type keyword; "

    if exptime == 0:
        return FrameType("bias", f"{why_not}EXPTIME=0")
    hint = name_hint(object_name)
    if hint is not None:
        return FrameType(hint, f"{why_not}OBJECT={object_name!r}")
    stem = _stem(filename)
    hint = name_hint(stem)
    if hint is not None:
        return FrameType(hint, f"{why_not}filename {stem!r}")
    if object_name and exptime is not None and exptime > 0 and filter_name:
        return FrameType(
            "light", f"{why_not}OBJECT={object_name!r}, EXPTIME={exptime:g}, filter {filter_name!r}"
        )

    missing = []
    if not object_name:
        missing.append("no OBJECT")
    if exptime is None:
        missing.append("no usable EXPTIME")
    if not filter_name:
        missing.append("no filter")
    detail = ", ".join(missing) if missing else "nothing to tell its type"
    return FrameType("unclassified", f"{why_not}cannot infer the type ({detail}; no hint in OBJECT or file name)")


def _stem(filename: str | None) -> str | None:
    if not filename:
        return None
    name = filename.replace("\\", "/").rsplit("/", 1)[-1]
    lowered = name.lower()
    for suffix in (".fits.fz", ".fits.gz", ".fit.gz", ".fts.gz", ".fits", ".fit", ".fts", ".fz", ".gz"):
        if lowered.endswith(suffix):
            return name[: -len(suffix)]
    return name
