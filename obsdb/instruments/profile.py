"""Instrument profiles: how one camera's header maps onto what obsdb needs.

A profile is configured once and then called on headers::

    profile = InstrumentProfile.from_dict("st8", {"match": {"INSTRUME": "ST-8"}, "gain": 2.6})
    info = profile.read(header, "NGC520-001-g.fit")

The generic profile reads MaxIm DL, SBIG, ACP, NINA, TheSkyX, SharpCap, Astro-Physics
and LCO (BANZAI) headers with the keyword tables of :mod:`obsdb.instruments.keywords`.
A profile from the configuration file (``[instruments.<name>]``) starts from the generic
settings and changes what it names:

.. code-block:: toml

    [instruments.st8]
    match = { INSTRUME = "ST-8" }          # regex searches, case-insensitive; all must match
                                           # (no match at all: the profile takes every header)
    gain = 2.6                             # e-/ADU, used when the header has no gain
    read_noise = 15.0                      # e-, likewise
    saturation = 60000                     # ADU, likewise
    default_saturation = "auto"            # or a number, or false: last resort
    overscan = "[1:20,1:1020]"             # FITS 1-based, used when there is no BIASSEC
    trim = "[21:1530,1:1020]"              # likewise for TRIMSEC/DATASEC
    site = { lat = 39.0, lon = -76.93, height = 50.0 }   # when the header has none
    time_keywords = ["DATE-OBS"]           # only these, first present wins
    utc_offset_hours = -7                  # the camera writes local time (MST) unmarked
    ccd_temp_kelvin = "auto"               # true / false / "auto" (> 150 means kelvin)
    longitude_west_positive = false        # true for software writing west longitudes > 0
    pixel_size_binned = true               # XPIXSZ already includes binning (SBFITSEXT)
    frame_types = { "Light" = "light", "Cal-B" = "bias" }   # extra frame-type aliases
    filters = { "Sloan g'" = "g'" }        # filter names as obsdb should store them
    [instruments.st8.keywords]             # replace a keyword list (first present wins)
    exptime = ["EXPOSURE", "EXPTIME"]

A header always gives a :class:`FrameInfo`: absurd or unreadable values become None
with a warning, and nothing is ever raised from :meth:`InstrumentProfile.read`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from types import MappingProxyType
from typing import Any

from astropy.io import fits

from obsdb.instruments import coords
from obsdb.instruments.frametype import IMAGE_TYPES, classify, merged_aliases, normalize_type_name
from obsdb.instruments.keywords import FILTER_PLACEHOLDERS, KEYWORDS
from obsdb.instruments.obstime import resolve_time
from obsdb.instruments.values import as_float, as_int, as_text, describe, first_present, raw_value

GENERIC = "generic"

_SECTION = re.compile(r"^\[\s*(\d+)\s*:\s*(\d+)\s*,\s*(\d+)\s*:\s*(\d+)\s*\]$")
_KELVIN_THRESHOLD = 150.0  # a detector "temperature" above this is in kelvin


class ProfileError(ValueError):
    """An instrument profile in the configuration has an unknown setting or a bad value."""


@dataclass(frozen=True)
class FrameInfo:
    """What a header says about a frame, in obsdb's units. Pure data; no I/O.

    Attributes
    ----------
    imagetyp
        'bias', 'dark', 'flat', 'light' or 'unclassified'.
    imagetyp_source
        Why: "IMAGETYP='Bias Frame'", "no frame-type keyword; EXPTIME=0", ...
    object, filter
        As written (trimmed; the filter through the profile's alias map), None if blank.
    exptime
        Seconds; None when missing or absurd.
    xbinning, ybinning
        At least 1 (1 when the header does not say).
    gain, read_noise, saturation
        e-/ADU, e-, ADU (saturation: the header's, else the profile's, else the
        digital maximum of the data type for integer data).
    ccd_temp
        Degrees Celsius (measured; the set point when nothing else is written).
    ra, dec
        Pointing in degrees ICRS, or None.
    date_obs
        Exposure start, timezone-aware UTC. ``mjd_start``, ``mjd_mid`` are the same
        instant and mid-exposure as MJD (UTC); ``time_source`` names the keyword(s).
    airmass, telescope, instrument
        ``instrument`` is the camera (INSTRUME).
    site_lat, site_lon, site_height
        Degrees (longitude east-positive) and metres, from the header or the profile.
    naxis1, naxis2
        Image size in pixels.
    overscan, trim
        FITS 1-based sections '[x1:x2,y1:y2]', or None.
    has_wcs
        A celestial WCS (CTYPE1/2, CRVAL, CRPIX and CD or CDELT) is present.
    pixel_scale
        Arcsec per pixel, from the WCS or from pixel size and focal length, else None.
    warnings
        Everything doubtful found on the way, in words.
    profile
        Name of the profile that read the header.
    sources
        ``(quantity, where it came from)`` pairs, e.g. ``('gain', 'EGAIN')``,
        ``('ccd_temp', 'SET-TEMP (set point)')``; see :meth:`source`.
    """

    imagetyp: str
    imagetyp_source: str
    object: str | None = None
    filter: str | None = None
    exptime: float | None = None
    xbinning: int = 1
    ybinning: int = 1
    gain: float | None = None
    read_noise: float | None = None
    saturation: float | None = None
    ccd_temp: float | None = None
    ra: float | None = None
    dec: float | None = None
    date_obs: datetime | None = None
    mjd_start: float | None = None
    mjd_mid: float | None = None
    time_source: str | None = None
    airmass: float | None = None
    telescope: str | None = None
    instrument: str | None = None
    site_lat: float | None = None
    site_lon: float | None = None
    site_height: float | None = None
    naxis1: int | None = None
    naxis2: int | None = None
    overscan: str | None = None
    trim: str | None = None
    has_wcs: bool = False
    pixel_scale: float | None = None
    warnings: tuple[str, ...] = ()
    profile: str = GENERIC
    sources: tuple[tuple[str, str], ...] = ()

    def source(self, quantity: str) -> str | None:
        """Where ``quantity`` (a field name) came from, or None when it was not found."""
        for name, where in self.sources:
            if name == quantity:
                return where
        return None

    @property
    def binning(self) -> str:
        return f"{self.xbinning}x{self.ybinning}"


def _frozen_map(d: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    return MappingProxyType(dict(d or {}))


@dataclass(frozen=True)
class InstrumentProfile:
    """How to read one camera's headers. See the module docstring for the settings."""

    name: str = GENERIC
    match: tuple[tuple[str, str], ...] = ()
    keywords: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: _frozen_map(KEYWORDS))
    frame_types: Mapping[str, str] = field(default_factory=_frozen_map)
    filters: Mapping[str, str] = field(default_factory=_frozen_map)
    gain: float | None = None
    read_noise: float | None = None
    saturation: float | None = None
    default_saturation: float | str | None = "auto"
    overscan: str | None = None
    trim: str | None = None
    site_lat: float | None = None
    site_lon: float | None = None
    site_height: float | None = None
    time_keywords: tuple[str, ...] | None = None
    utc_offset_hours: float | None = None
    ccd_temp_kelvin: bool | None = None  # None: auto
    longitude_west_positive: bool = False
    pixel_size_binned: bool = True
    description: str | None = None

    # -- construction -----------------------------------------------------------------

    @property
    def is_generic(self) -> bool:
        return self.name == GENERIC

    @classmethod
    def from_dict(cls, name: str, d: Mapping[str, Any]) -> InstrumentProfile:
        """A profile from one ``[instruments.<name>]`` table of the configuration.

        Unnamed settings keep the generic profile's values; ``keywords`` replaces only
        the lists it names.

        Raises
        ------
        ProfileError
            For an unknown setting or a value of the wrong type.
        """
        where = f"[instruments.{name}]"
        if not isinstance(d, Mapping):
            raise ProfileError(f"{where} must be a table")
        known = {
            "match", "keywords", "frame_types", "filters", "gain", "read_noise", "saturation",
            "default_saturation", "overscan", "trim", "site", "time_keywords", "utc_offset_hours",
            "ccd_temp_kelvin", "longitude_west_positive", "pixel_size_binned", "description",
        }
        unknown = set(d) - known
        if unknown:
            raise ProfileError(
                f"unknown setting(s) in {where}: {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}"
            )
        kwargs: dict[str, Any] = {"name": name}

        match = d.get("match", {})
        if not isinstance(match, Mapping):
            raise ProfileError(f"{where} match must be a table of KEYWORD = \"regex\"")
        pairs = []
        for key, pattern in match.items():
            if not isinstance(pattern, str):
                raise ProfileError(f"{where} match.{key} must be a string (a regular expression)")
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ProfileError(
                    f"{where} match.{key} = {pattern!r} is not a valid regular expression: {exc}"
                ) from None
            pairs.append((str(key).upper(), pattern))
        kwargs["match"] = tuple(pairs)

        table = dict(KEYWORDS)
        overrides = d.get("keywords", {})
        if not isinstance(overrides, Mapping):
            raise ProfileError(f"{where} keywords must be a table of quantity = [\"KEYWORD\", ...]")
        for quantity, keys in overrides.items():
            if quantity not in KEYWORDS:
                raise ProfileError(
                    f"{where} keywords.{quantity}: unknown quantity; known: {', '.join(sorted(KEYWORDS))}"
                )
            if isinstance(keys, str):
                keys = [keys]
            if not isinstance(keys, list | tuple) or not all(isinstance(k, str) for k in keys):
                raise ProfileError(f"{where} keywords.{quantity} must be a list of keyword names")
            table[quantity] = tuple(k.strip().upper() for k in keys)
        kwargs["keywords"] = _frozen_map(table)

        frame_types = _string_table(d.get("frame_types", {}), f"{where} frame_types")
        for alias, kind in frame_types.items():
            if kind not in IMAGE_TYPES:
                raise ProfileError(
                    f"{where} frame_types.{alias!r} = {kind!r}: must be one of {', '.join(IMAGE_TYPES)}"
                )
        kwargs["frame_types"] = _frozen_map({normalize_type_name(k): v for k, v in frame_types.items()})
        kwargs["filters"] = _frozen_map(
            {k.strip().lower(): v.strip() for k, v in _string_table(d.get("filters", {}), f"{where} filters").items()}
        )

        for key in ("gain", "read_noise", "saturation", "utc_offset_hours"):
            if key in d:
                kwargs[key] = _number(d[key], f"{where} {key}", positive=key != "utc_offset_hours")
        if "default_saturation" in d:
            value = d["default_saturation"]
            if value == "auto":
                kwargs["default_saturation"] = "auto"
            elif value is False or value is None:
                kwargs["default_saturation"] = None
            else:
                kwargs["default_saturation"] = _number(value, f"{where} default_saturation", positive=True)
        for key in ("overscan", "trim"):
            if key in d:
                value = d[key]
                if not isinstance(value, str) or _SECTION.match(value.strip()) is None:
                    raise ProfileError(f"{where} {key} = {value!r}: must be a FITS section such as '[1:20,1:1020]'")
                kwargs[key] = value.strip()
        if "site" in d:
            site = d["site"]
            if not isinstance(site, Mapping) or set(site) - {"lat", "lon", "height"}:
                raise ProfileError(f"{where} site must be a table with lat, lon and/or height")
            if "lat" in site:
                kwargs["site_lat"] = _number(site["lat"], f"{where} site.lat", lo=-90, hi=90)
            if "lon" in site:
                kwargs["site_lon"] = coords.normalize_lon(_number(site["lon"], f"{where} site.lon", lo=-360, hi=360))
            if "height" in site:
                kwargs["site_height"] = _number(site["height"], f"{where} site.height")
        if "time_keywords" in d:
            keys = d["time_keywords"]
            if isinstance(keys, str):
                keys = [keys]
            if not isinstance(keys, list | tuple) or not keys or not all(isinstance(k, str) for k in keys):
                raise ProfileError(f"{where} time_keywords must be a non-empty list of keyword names")
            kwargs["time_keywords"] = tuple(k.strip().upper() for k in keys)
        if "ccd_temp_kelvin" in d:
            value = d["ccd_temp_kelvin"]
            if value == "auto":
                kwargs["ccd_temp_kelvin"] = None
            elif isinstance(value, bool):
                kwargs["ccd_temp_kelvin"] = value
            else:
                raise ProfileError(f"{where} ccd_temp_kelvin must be true, false or \"auto\"")
        for key in ("longitude_west_positive", "pixel_size_binned"):
            if key in d:
                if not isinstance(d[key], bool):
                    raise ProfileError(f"{where} {key} must be true or false")
                kwargs[key] = d[key]
        if "description" in d:
            kwargs["description"] = str(d["description"])
        return cls(**kwargs)

    def matches(self, header: fits.Header) -> bool:
        """True when every ``match`` keyword is present and its regex found in the value."""
        for key, pattern in self.match:
            value = as_text(raw_value(header, key))
            if value is None or re.search(pattern, value, re.IGNORECASE) is None:
                return False
        return True

    # -- reading ----------------------------------------------------------------------

    def read(self, header: fits.Header, filename: str | None = None, *, now: datetime | None = None) -> FrameInfo:
        """What ``header`` says, as a :class:`FrameInfo`. Never raises.

        Parameters
        ----------
        header
            The image header (as :func:`obsdb.fitsfile.read_header` returns it).
        filename
            The file's name, a hint for the frame type when the header has none.
        now
            The present, for rejecting dates in the future (default: the clock).
        """
        return _Reading(self, header, filename, now).run()


def _string_table(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ProfileError(f"{where} must be a table of \"name\" = \"value\" strings")
    return dict(value)


def _number(value: Any, where: str, *, positive: bool = False, lo: float | None = None,
            hi: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ProfileError(f"{where} must be a number, not {value!r}")
    if positive and value <= 0:
        raise ProfileError(f"{where} must be positive, not {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ProfileError(f"{where} = {value!r} is out of range [{lo}, {hi}]")
    return float(value)


GENERIC_PROFILE = InstrumentProfile()


def load_profiles(instruments: Mapping[str, Mapping[str, Any]] | None) -> list[InstrumentProfile]:
    """Profiles from the configuration's ``instruments`` tables, the generic one last.

    A table named ``generic`` customises the fallback profile itself (for example to give
    every camera the site); it stays last whatever its place in the file.
    """
    profiles: list[InstrumentProfile] = []
    generic = GENERIC_PROFILE
    for name, settings in (instruments or {}).items():
        profile = InstrumentProfile.from_dict(name, settings)
        if profile.is_generic:
            if profile.match:
                raise ProfileError("[instruments.generic] is the fallback profile; it cannot have match")
            generic = profile
        else:
            profiles.append(profile)
    profiles.append(generic)
    return profiles


def select_profile(header: fits.Header, profiles: Iterable[InstrumentProfile]) -> InstrumentProfile:
    """The first profile whose ``match`` fits the header; the generic one otherwise."""
    fallback = GENERIC_PROFILE
    for profile in profiles:
        if profile.is_generic:
            fallback = profile
            continue
        if profile.matches(header):
            return profile
    return fallback


# -- the reading itself -----------------------------------------------------------------


class _Reading:
    """One pass over one header; collects values, sources and warnings."""

    def __init__(self, profile: InstrumentProfile, header: fits.Header, filename: str | None,
                 now: datetime | None) -> None:
        self.p = profile
        self.h = header
        self.filename = filename
        self.now = now
        self.warnings: list[str] = []
        self.sources: dict[str, str] = {}
        self.values: dict[str, Any] = {}

    def keys(self, quantity: str) -> tuple[str, ...]:
        return tuple(self.p.keywords.get(quantity, ()))

    def first(self, quantity: str) -> tuple[str | None, Any]:
        return first_present(self.h, self.keys(quantity), self.warnings)

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)

    def guarded(self, what: str, step: Callable[[], None]) -> None:
        try:
            step()
        except Exception as exc:  # a header must always give a FrameInfo
            self.warn(f"{what}: could not be read ({type(exc).__name__}: {exc})")

    def run(self) -> FrameInfo:
        v = self.values
        for what, step in (
            ("image size", self.read_size),
            ("exposure time", self.read_exptime),
            ("text fields", self.read_texts),
            ("filter", self.read_filter),
            ("binning", self.read_binning),
            ("detector", self.read_detector),
            ("ccd temperature", self.read_ccd_temp),
            ("wcs", self.read_wcs),
            ("optics", self.read_optics),
            ("time", self.read_time),
            ("pointing", self.read_pointing),
            ("airmass", self.read_airmass),
            ("site", self.read_site),
            ("sections", self.read_sections),
            ("frame type", self.read_frame_type),
        ):
            self.guarded(what, step)
        v.setdefault("imagetyp", "unclassified")
        v.setdefault("imagetyp_source", "the frame type could not be read")
        allowed = {f.name for f in fields(FrameInfo)}
        return FrameInfo(
            **{k: val for k, val in v.items() if k in allowed},
            warnings=tuple(dict.fromkeys(self.warnings)),
            profile=self.p.name,
            sources=tuple(self.sources.items()),
        )

    # -- one quantity each --------------------------------------------------------------

    def _number(self, quantity: str, *, lo: float | None = None, hi: float | None = None,
                what: str | None = None) -> float | None:
        """The first keyword of ``quantity`` as a number in [lo, hi], else None + warning."""
        key, value = self.first(quantity)
        if key is None:
            return None
        number = as_float(value)
        label = what or quantity.replace("_", " ")
        if number is None:
            self.warn(f"{describe(key, value)} is not a number: {label} unknown")
            return None
        if (lo is not None and number < lo) or (hi is not None and number > hi):
            self.warn(f"{describe(key, value)} is not a plausible {label}: ignored")
            return None
        self.sources[quantity] = key
        return number

    def read_size(self) -> None:
        for axis in ("1", "2"):
            value = as_int(raw_value(self.h, "NAXIS" + axis)) or as_int(raw_value(self.h, "ZNAXIS" + axis))
            self.values["naxis" + axis] = value

    def read_exptime(self) -> None:
        key, value = self.first("exptime")
        if key is None:
            return
        number = as_float(value)
        if number is None:
            self.warn(f"{describe(key, value)} is not a number: exposure time unknown")
        elif number < 0:
            self.warn(f"{describe(key, value)} is negative: exposure time unknown")
        elif number > 86400:
            self.warn(f"{describe(key, value)} is longer than a day: exposure time unknown")
        else:
            self.values["exptime"] = number
            self.sources["exptime"] = key

    def read_texts(self) -> None:
        for quantity in ("object", "telescope", "instrument"):
            key, value = self.first(quantity)
            text = as_text(value)
            if text is not None:
                self.values[quantity] = text
                self.sources[quantity] = key or quantity

    def read_filter(self) -> None:
        key, value = self.first("filter")
        name = as_text(value)
        source = key
        if name is None:
            wheels = [(k, as_text(raw_value(self.h, k, self.warnings))) for k in self.keys("filter_wheels")]
            wheels = [(k, w) for k, w in wheels if w is not None]
            real = [(k, w) for k, w in wheels if w.lower() not in FILTER_PLACEHOLDERS]
            if real:
                name = "+".join(w for _, w in real)
                source = "+".join(k for k, _ in real)
            elif wheels:
                source, name = wheels[0]
        if name is None:
            return
        mapped = self.p.filters.get(name.lower())
        if mapped is not None:
            self.sources["filter"] = f"{source} {name!r} via the profile's filters"
            name = mapped
        else:
            self.sources["filter"] = source or "filter"
        self.values["filter"] = name

    def read_binning(self) -> None:
        xkey, xval = self.first("xbinning")
        ykey, yval = self.first("ybinning")
        x = self._binning_value(xkey, xval)
        y = self._binning_value(ykey, yval)
        source = "/".join(k for k, n in ((xkey, x), (ykey, y)) if k and n)
        if x is None and y is None:
            key, value = self.first("binning")
            if key is not None:
                parts = [p for p in re.split(r"[\sxX*,]+", str(value).strip()) if p]
                numbers = [as_int(p) for p in parts]
                if len(numbers) in (1, 2) and all(n is not None and 1 <= n <= 64 for n in numbers):
                    x, y = numbers[0], numbers[-1]
                    source = key
                else:
                    self.warn(f"{describe(key, value)} is not a binning: 1x1 assumed")
        # One axis given: the other is taken to be the same (square binning).
        x = x or y or 1
        y = y or x
        self.values["xbinning"], self.values["ybinning"] = x, y
        if source:
            self.sources["binning"] = source

    def _binning_value(self, key: str | None, value: Any) -> int | None:
        if key is None:
            return None
        number = as_int(value)
        if number is None or not 1 <= number <= 64:
            self.warn(f"{describe(key, value)} is not a binning factor: 1 assumed")
            return None
        return number

    def read_detector(self) -> None:
        # CMOS software (NINA, SharpCap) writes GAIN as the camera's gain *setting* (0, 100, 120...)
        # and the e-/ADU in EGAIN; no detector has more than ~50 e-/ADU.
        gain = self._number("gain", lo=1e-3, hi=50, what="gain in e-/ADU")
        if gain is None and self.p.gain is not None:
            gain = self.p.gain
            self.sources["gain"] = f"profile {self.p.name}"
        self.values["gain"] = gain

        noise = self._number("read_noise", lo=1e-3, hi=10000, what="read noise in e-")
        if noise is None and self.p.read_noise is not None:
            noise = self.p.read_noise
            self.sources["read_noise"] = f"profile {self.p.name}"
        self.values["read_noise"] = noise

        digital_max = self._digital_max()
        hi = digital_max * 1.001 if digital_max is not None else None
        saturation = self._number("saturation", lo=1e-3, hi=hi)
        if saturation is None:
            key, value = self.first("datamax")
            number = as_float(value)
            # DATAMAX is a detector limit only when it is large and within the data type.
            if key is not None and number is not None and number >= 1000 and (hi is None or number <= hi):
                saturation = number
                self.sources["saturation"] = key
        if saturation is None and self.p.saturation is not None:
            saturation = self.p.saturation
            self.sources["saturation"] = f"profile {self.p.name}"
        if saturation is None and self.p.default_saturation is not None:
            if self.p.default_saturation == "auto":
                if digital_max is not None:
                    saturation = digital_max
                    self.sources["saturation"] = "digital maximum of BITPIX/BZERO"
            else:
                saturation = float(self.p.default_saturation)
                self.sources["saturation"] = f"profile {self.p.name} default_saturation"
        self.values["saturation"] = saturation

    def _digital_max(self) -> float | None:
        """Largest value integer data can hold, after BZERO/BSCALE (None for float data)."""
        bitpix = as_int(raw_value(self.h, "BITPIX"))
        if bitpix not in (8, 16, 32, 64):
            return None
        bzero = as_float(raw_value(self.h, "BZERO")) or 0.0
        bscale = as_float(raw_value(self.h, "BSCALE")) or 1.0
        if bitpix == 8:
            stored_max = 255.0
        else:
            stored_max = float(2 ** (bitpix - 1) - 1)
        return bzero + bscale * stored_max

    def read_ccd_temp(self) -> None:
        key, value = self.first("ccd_temp")
        setpoint = False
        if key is None:
            key, value = self.first("ccd_set_temp")
            setpoint = True
        if key is None:
            return
        number = as_float(value)
        if number is None:
            self.warn(f"{describe(key, value)} is not a number: CCD temperature unknown")
            return
        kelvin = self.p.ccd_temp_kelvin
        if kelvin is None:
            kelvin = number > _KELVIN_THRESHOLD
        note = ""
        if kelvin:
            number -= 273.15
            note = " (kelvin)"
        if not -150 <= number <= 80:
            self.warn(f"{describe(key, value)} is not a plausible CCD temperature: ignored")
            return
        self.values["ccd_temp"] = number
        self.sources["ccd_temp"] = key + note + (" (set point; no measured temperature)" if setpoint else "")

    def read_wcs(self) -> None:
        h = self.h
        ctype1, ctype2 = raw_value(h, "CTYPE1"), raw_value(h, "CTYPE2")
        if not (coords.is_celestial_ctype(ctype1) and coords.is_celestial_ctype(ctype2)):
            return
        nums = {k: as_float(raw_value(h, k, self.warnings)) for k in (
            "CRVAL1", "CRVAL2", "CRPIX1", "CRPIX2", "CD1_1", "CD1_2", "CD2_1", "CD2_2",
            "CDELT1", "CDELT2", "PC1_1", "PC1_2", "PC2_1", "PC2_2")}
        if None in (nums["CRVAL1"], nums["CRVAL2"], nums["CRPIX1"], nums["CRPIX2"]):
            return
        has_cd = (nums["CD1_1"] is not None or nums["CD1_2"] is not None) and (
            nums["CD2_1"] is not None or nums["CD2_2"] is not None)
        has_cdelt = bool(nums["CDELT1"]) and bool(nums["CDELT2"])
        if not (has_cd or has_cdelt):
            return
        self.values["has_wcs"] = True
        self.values["wcs_celestial_radec"] = str(ctype1).upper().startswith("RA")
        if has_cd:
            det = (nums["CD1_1"] or 0.0) * (nums["CD2_2"] or 0.0) - (nums["CD1_2"] or 0.0) * (nums["CD2_1"] or 0.0)
            source = "CD matrix"
        else:
            pc11 = nums["PC1_1"] if nums["PC1_1"] is not None else 1.0
            pc22 = nums["PC2_2"] if nums["PC2_2"] is not None else 1.0
            det = nums["CDELT1"] * nums["CDELT2"] * (pc11 * pc22 - (nums["PC1_2"] or 0.0) * (nums["PC2_1"] or 0.0))
            source = "CDELT"
        scale = math.sqrt(abs(det)) * 3600.0
        if 0 < scale < 36000:
            self.values["pixel_scale"] = scale
            self.sources["pixel_scale"] = f"WCS {source}"

    def read_optics(self) -> None:
        """Pixel scale from pixel size and focal length, when there is no WCS scale.

        206.265 arcsec per (micrometre / millimetre). SBFITSEXT (MaxIm DL, NINA,
        TheSkyX) writes XPIXSZ *after* binning; a profile with
        ``pixel_size_binned = false`` multiplies by the binning instead.
        """
        if self.values.get("pixel_scale") is not None:
            return
        pkey, pvalue = self.first("pixel_size")
        fkey, fvalue = self.first("focal_length")
        size, focal = as_float(pvalue), as_float(fvalue)
        if pkey is None or fkey is None or size is None or focal is None:
            return
        if size <= 0 or focal <= 0:
            return  # MaxIm writes FOCALLEN = 0 when it does not know: not a warning
        if not self.p.pixel_size_binned:
            size *= self.values.get("xbinning", 1)
        self.values["pixel_scale"] = 206.265 * size / focal
        self.sources["pixel_scale"] = f"{pkey}/{fkey}" + ("" if self.p.pixel_size_binned else " x binning")

    def read_time(self) -> None:
        result = resolve_time(
            self.h, self.values.get("exptime"), preferred=self.p.time_keywords,
            utc_offset_hours=self.p.utc_offset_hours, now=self.now,
        )
        self.values.update(date_obs=result.date_obs, mjd_start=result.mjd_start,
                           mjd_mid=result.mjd_mid, time_source=result.source)
        for message in result.warnings:
            self.warn(message)

    def read_pointing(self) -> None:
        ra_keys, dec_keys = self.keys("ra"), self.keys("dec")
        found = None
        for ra_key, dec_key in zip(ra_keys, dec_keys, strict=False):
            ra_raw = raw_value(self.h, ra_key, self.warnings)
            dec_raw = raw_value(self.h, dec_key, self.warnings)
            if ra_raw is None or dec_raw is None:
                continue
            ra, dec = coords.parse_ra(ra_raw), coords.parse_dec(dec_raw)
            if ra is None or dec is None or not -360 < ra <= 360 or not -90 <= dec <= 90:
                self.warn(f"{describe(ra_key, ra_raw)}, {describe(dec_key, dec_raw)} is not a sky position: ignored")
                continue
            found = (ra % 360.0, dec, f"{ra_key}/{dec_key}")
            break
        if found is None and self.values.get("has_wcs") and self.values.get("wcs_celestial_radec"):
            ra = as_float(raw_value(self.h, "CRVAL1"))
            dec = as_float(raw_value(self.h, "CRVAL2"))
            if ra is not None and dec is not None and -90 <= dec <= 90:
                found = (ra % 360.0, dec, "CRVAL1/CRVAL2")
        if found is None:
            return
        ra, dec, source = found
        equinox = self._equinox()
        if equinox is not None and abs(equinox - 2000.0) > 0.01:
            ra, dec = self._to_icrs(ra, dec, equinox)
            source += f" (equinox {equinox:.2f} precessed to ICRS)"
        self.values["ra"], self.values["dec"] = ra, dec
        self.sources["ra"] = self.sources["dec"] = source

    def _equinox(self) -> float | None:
        radesys = as_text(raw_value(self.h, "RADESYS")) or as_text(raw_value(self.h, "RADECSYS"))
        if radesys and radesys.upper() in ("ICRS", "GCRS", "GAPPT"):
            return None
        key, value = self.first("equinox")
        if key is None:
            return None
        number = as_float(value)
        if number is None:
            text = str(value).strip().upper()
            if text.startswith("J") and as_float(text[1:]) is not None:
                number = as_float(text[1:])
            elif text in ("JNOW", "NOW", "APPARENT", "TOPOCENTRIC") and self.values.get("mjd_start"):
                number = 2000.0 + (self.values["mjd_start"] - 51544.5) / 365.25
            else:
                self.warn(f"{describe(key, value)} is not an equinox: J2000 assumed")
                return None
        if not 1800 <= number <= 2200:
            self.warn(f"{describe(key, value)} is not a plausible equinox: J2000 assumed")
            return None
        return number

    def _to_icrs(self, ra: float, dec: float, equinox: float) -> tuple[float, float]:
        if equinox < 1984.0:
            from astropy import units as u
            from astropy.coordinates import FK4, ICRS, SkyCoord
            from astropy.time import Time

            c = SkyCoord(ra * u.deg, dec * u.deg, frame=FK4(equinox=Time(equinox, format="byear")))
            icrs = c.transform_to(ICRS())
            return float(icrs.ra.degree), float(icrs.dec.degree)
        return coords.precess_to_icrs(ra, dec, equinox)

    def read_airmass(self) -> None:
        key, value = self.first("airmass")
        if key is None:
            return
        number = as_float(value)
        if number is None or not 0.99 <= number <= 100:
            self.warn(f"{describe(key, value)} is not a plausible airmass: ignored")
            return
        self.values["airmass"] = max(number, 1.0)
        self.sources["airmass"] = key

    def read_site(self) -> None:
        lat = self._site_angle("site_lat", coords.parse_dec, -90, 90)
        lon = self._site_angle("site_lon", coords.parse_dec, -360, 360)
        height = self._number("site_height", lo=-500, hi=10000, what="site height in metres")
        if lat is None or lon is None:
            xyz = [as_float(raw_value(self.h, k, self.warnings)) for k in ("OBSGEO-X", "OBSGEO-Y", "OBSGEO-Z")]
            if None not in xyz and math.hypot(*xyz) > 6.3e6:
                glat, glon, gheight = coords.geodetic_from_geocentric(*xyz)
                lat, lon = glat, glon
                self.sources["site_lat"] = self.sources["site_lon"] = "OBSGEO-X/Y/Z"
                if height is None:
                    height = gheight
                    self.sources["site_height"] = "OBSGEO-X/Y/Z"
        for quantity, value, fallback in (("site_lat", lat, self.p.site_lat), ("site_lon", lon, self.p.site_lon),
                                          ("site_height", height, self.p.site_height)):
            if value is None and fallback is not None:
                value = fallback
                self.sources[quantity] = f"profile {self.p.name}"
            if quantity == "site_lon" and value is not None:
                value = coords.normalize_lon(value)
            self.values[quantity] = value

    def _site_angle(self, quantity: str, parse: Callable[[Any], float | None], lo: float, hi: float) -> float | None:
        key, value = self.first(quantity)
        if key is None:
            return None
        number = parse(value)
        if number is None or not lo <= number <= hi:
            self.warn(f"{describe(key, value)} is not a plausible {quantity.replace('_', ' ')}: ignored")
            return None
        if quantity == "site_lon" and self.p.longitude_west_positive and key != "OBSGEO-L":
            number = -number
        self.sources[quantity] = key
        return number

    def read_sections(self) -> None:
        for quantity in ("overscan", "trim"):
            key, value = self.first(quantity)
            section = self._section(key, value) if key is not None else None
            if section is not None:
                self.sources[quantity] = key
            else:
                fallback = getattr(self.p, quantity)
                section = self._section(f"profile {quantity}", fallback) if fallback else None
                if section is not None:
                    self.sources[quantity] = f"profile {self.p.name}"
            self.values[quantity] = section

    def _section(self, key: str, value: Any) -> str | None:
        m = _SECTION.match(str(value).strip())
        if m is None:
            self.warn(f"{describe(key, value)} is not a FITS section '[x1:x2,y1:y2]': ignored")
            return None
        x1, x2, y1, y2 = (int(g) for g in m.groups())
        nx, ny = self.values.get("naxis1"), self.values.get("naxis2")
        if min(x1, x2, y1, y2) < 1 or (nx and max(x1, x2) > nx) or (ny and max(y1, y2) > ny):
            self.warn(f"{describe(key, value)} lies outside the {nx}x{ny} image: ignored")
            return None
        return f"[{x1}:{x2},{y1}:{y2}]"

    def read_frame_type(self) -> None:
        key, value = self.first("imagetyp")
        frame_type = classify(
            key, as_text(value),
            exptime=self.values.get("exptime"),
            object_name=self.values.get("object"),
            filter_name=self.values.get("filter"),
            filename=self.filename,
            aliases=merged_aliases(self.p.frame_types),
        )
        self.values["imagetyp"] = frame_type.imagetyp
        self.values["imagetyp_source"] = frame_type.source
