"""When an exposure started, in UTC, from whatever time keywords a header has.

Headers say it in many ways: ``DATE-OBS`` with or without 'T', fractional seconds, a
trailing 'Z' or a UTC offset ('2017-12-19T18:33:43.317-0700' is local time seven hours
behind UTC); a date-only ``DATE-OBS`` ('2018-10-14', or the old 'dd/mm/yy' '14/10/18') with
the time in ``TIME-OBS``/``UT``/``UTSTART``; ``DATE-BEG``; ``DATE-AVG`` and ``MJD-AVG``
(mid-exposure); ``MJD-OBS``; MaxIm DL's ``JD`` (start of exposure). ``JD-HELIO`` and
other barycentric or heliocentric dates are never used: they are not UTC.

Every keyword present becomes a candidate start time, with its precision: the
resolution of the digits written (whole seconds: 1 s; ``MJD-OBS`` with 8 decimals:
0.9 ms), but never finer than what a float64 can hold (a JD near 2.46e6 is good to
about 40 microseconds). The most precise candidate wins; when a more standard keyword
gives exactly the same instant (a JD computed from a whole-second DATE-OBS), or is
about as precise and agrees, that keyword is used instead, since the other adds nothing. Candidates that disagree by
more than a second (or their precision) are reported in the warnings. ``TIMESYS`` other
than UTC (TT, TAI, GPS, TDB...) is converted with astropy.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from astropy.io import fits

from obsdb.instruments import keywords as kw
from obsdb.instruments.values import as_float, card_decimals, raw_value

MJD_EPOCH = datetime(1858, 11, 17, tzinfo=UTC)
EARLIEST = datetime(1950, 1, 1, tzinfo=UTC)
JD_MJD_OFFSET = 2400000.5

# Time scales astropy converts to UTC. UT1, 'UT' and 'GMT' are within 0.9 s of UTC and
# are taken as UTC (a header that says 'UT' nearly always means UTC).
_UTC_NAMES = {"", "UTC", "UT", "GMT", "Z", "UT1", "UTC(NIST)", "UTC(USNO)"}
_ASTROPY_SCALES = {"TT": "tt", "TDT": "tt", "ET": "tt", "TAI": "tai", "TDB": "tdb", "TCG": "tcg", "TCB": "tcb"}
_GPS_MINUS_TAI = -19.0  # seconds: GPS time = TAI - 19 s

_ISO = re.compile(
    r"""^\s*(?P<y>\d{4})-(?P<mo>\d{1,2})-(?P<d>\d{1,2})
    (?:(?:T|\s+)(?P<h>\d{1,2}):(?P<mi>\d{1,2})(?::(?P<s>\d{1,2})(?:\.(?P<f>\d*))?)?)?
    \s*(?P<tz>Z|UTC|UT|[+-]\d{2}(?::?\d{2})?)?\s*$""",
    re.X | re.I,
)
_OLD_DATE = re.compile(r"^\s*(?P<d>\d{1,2})/(?P<mo>\d{1,2})/(?P<y>\d{2})\s*$")  # dd/mm/yy = 19yy
_TIME_OF_DAY = re.compile(
    r"^\s*(?P<h>\d{1,2})[:\s](?P<mi>\d{1,2})(?:[:\s](?P<s>\d{1,2})(?:\.(?P<f>\d*))?)?\s*(?P<tz>Z)?\s*$", re.I
)


@dataclass(frozen=True)
class ObsTime:
    """The exposure's times, where they came from, and any doubts."""

    date_obs: datetime | None  # exposure start, timezone-aware UTC
    mjd_start: float | None
    mjd_mid: float | None
    source: str | None
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Candidate:
    key: str  # the main keyword, for preferences
    label: str  # what time_source says
    instant: datetime  # UTC, as written (start or mid)
    is_mid: bool
    quantum: float  # seconds: the resolution of the value as written
    rank: int  # order of preference among equals


def datetime_to_mjd(when: datetime) -> float:
    """MJD (UTC) of an aware datetime."""
    delta = when - MJD_EPOCH
    return delta.days + (delta.seconds + delta.microseconds / 1e6) / 86400.0


def mjd_to_datetime(mjd: float, step: float = 1e-6) -> datetime:
    """Aware UTC datetime of an MJD (UTC), its time of day rounded to ``step`` seconds."""
    days = math.floor(mjd)
    seconds = (mjd - days) * 86400.0
    seconds = round(round(seconds / step) * step, 6)
    return MJD_EPOCH + timedelta(days=days, seconds=seconds)


def _day_count_precision(value: float, decimals: int | None) -> tuple[float, float]:
    """(quantum, rounding step) in seconds of a JD or MJD written with ``decimals`` decimals.

    The quantum is what the value can tell apart: the last written digit, but never less
    than the float64 spacing at that value (a JD near 2.46e6 is good to ~40 us, however
    many digits a writer prints). The step removes noise and nothing else: a day count
    with d decimals is an exact multiple of 10**(2-d) seconds, and digits below the
    float64 spacing are noise (MaxIm DL's JD for 03:12:08 reads 03:12:07.999990; rounded
    to 0.1 ms it is 03:12:08.0000, the instant its DATE-OBS names).
    """
    ulp_seconds = math.ulp(value) * 86400.0
    if decimals is None:
        return max(0.0864, ulp_seconds), 1e-6
    quantum = max(86400.0 * 10.0 ** -decimals, ulp_seconds, 1e-6)
    step = max(10.0 ** (2 - decimals), 10.0 ** math.ceil(math.log10(ulp_seconds)), 1e-6)
    return quantum, min(step, 1.0)


def _to_utc(naive: datetime, scale: str) -> datetime:
    """A naive datetime in ``scale`` (a TIMESYS already normalised) as aware UTC."""
    if scale == "utc":
        return naive.replace(tzinfo=UTC)
    from astropy.time import Time, TimeDelta

    if scale == "gps":
        t = Time(naive, scale="tai") - TimeDelta(_GPS_MINUS_TAI, format="sec")
    else:
        t = Time(naive, scale=scale)
    return t.utc.to_datetime(timezone=UTC)


def _mjd_to_utc(mjd: float, scale: str, step: float) -> datetime:
    if scale != "utc":
        from astropy.time import Time, TimeDelta

        if scale == "gps":
            t = Time(mjd, format="mjd", scale="tai") - TimeDelta(_GPS_MINUS_TAI, format="sec")
        else:
            t = Time(mjd, format="mjd", scale=scale)
        mjd = float(t.utc.mjd)
    return mjd_to_datetime(mjd, step)


def _parse_time_of_day(value: Any) -> tuple[timedelta, float, bool] | None:
    """A time of day: 'hh:mm:ss.s', 'hh mm ss' or decimal hours. (offset, quantum, has Z)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        hours = float(value)
        if not 0 <= hours < 24:
            return None
        return timedelta(hours=hours), 1.0, False
    if not isinstance(value, str):
        return None
    m = _TIME_OF_DAY.match(value)
    if m is None:
        number = as_float(value)
        if number is not None and 0 <= number < 24:
            return timedelta(hours=number), 1.0, False
        return None
    h, mi = int(m["h"]), int(m["mi"])
    s = int(m["s"]) if m["s"] else 0
    frac = m["f"] or ""
    if h > 23 or mi > 59 or s > 60:
        return None
    quantum = 10.0 ** -len(frac) if m["s"] else 60.0
    micro = round(float("0." + frac) * 1e6) if frac else 0
    return timedelta(hours=h, minutes=mi, seconds=s, microseconds=micro), quantum, bool(m["tz"])


def _parse_tz(text: str | None) -> timedelta | None:
    """A UTC offset such as '-0700', '+05:30', '-07'; 'Z'/'UTC' give zero."""
    if not text:
        return None
    if text.upper() in ("Z", "UTC", "UT"):
        return timedelta(0)
    sign = -1 if text[0] == "-" else 1
    digits = text[1:].replace(":", "")
    hours = int(digits[:2])
    minutes = int(digits[2:4]) if len(digits) >= 4 else 0
    return sign * timedelta(hours=hours, minutes=minutes)


@dataclass
class _Parsed:
    """A date string split up: the date, optionally the time, an explicit offset."""

    date: datetime  # naive midnight
    time: timedelta | None
    quantum: float
    tz: timedelta | None


def _parse_date(value: Any) -> _Parsed | None:
    if not isinstance(value, str):
        return None
    m = _ISO.match(value)
    if m is not None:
        date = datetime(int(m["y"]), int(m["mo"]), int(m["d"]))
        if m["h"] is None:
            return _Parsed(date, None, 86400.0, _parse_tz(m["tz"]))
        h, mi = int(m["h"]), int(m["mi"])
        s = int(m["s"]) if m["s"] else 0
        if h > 23 or mi > 59 or s > 60:
            raise ValueError("time of day out of range")
        frac = m["f"] or ""
        micro = round(float("0." + frac) * 1e6) if frac else 0
        quantum = max(10.0 ** -len(frac), 1e-6) if m["s"] else 60.0
        time = timedelta(hours=h, minutes=mi, seconds=s, microseconds=micro)
        return _Parsed(date, time, quantum, _parse_tz(m["tz"]))
    m = _OLD_DATE.match(value)
    if m is not None:
        # The pre-1999 FITS form 'dd/mm/yy' means 19yy. No CCD frame predates 1950, and
        # some writers kept the form after 1999, so yy < 50 is read as 20yy.
        yy = int(m["y"])
        year = 1900 + yy if yy >= 50 else 2000 + yy
        return _Parsed(datetime(year, int(m["mo"]), int(m["d"])), None, 86400.0, None)
    return None


def _normalise_scale(timesys: Any, warnings: list[str]) -> str:
    name = str(timesys).strip().upper() if timesys is not None else ""
    if name in _UTC_NAMES:
        return "utc"
    if name in _ASTROPY_SCALES:
        return _ASTROPY_SCALES[name]
    if name == "GPS":
        return "gps"
    warnings.append(f"TIMESYS={timesys!r} is not a known time scale; times taken as UTC")
    return "utc"


class _Collector:
    """Turns every time keyword of a header into candidates."""

    def __init__(self, header: fits.Header, scale: str, utc_offset_hours: float | None,
                 warnings: list[str]) -> None:
        self.header = header
        self.scale = scale
        self.utc_offset = timedelta(hours=utc_offset_hours) if utc_offset_hours else None
        self.warnings = warnings
        self.candidates: list[_Candidate] = []
        self.rank = 0

    def _add(self, key: str, label: str, instant: datetime, is_mid: bool, quantum: float) -> None:
        self.candidates.append(_Candidate(key, label, instant, is_mid, quantum, self.rank))

    def _civil(self, naive: datetime, tz: timedelta | None, label: str) -> tuple[datetime, str]:
        """Apply an explicit offset, else the profile's local-time offset, else TIMESYS."""
        if tz is not None:
            if tz:
                label += f" (local time, UTC{_format_offset(tz)})"
            return (naive - tz).replace(tzinfo=UTC), label
        if self.utc_offset is not None:
            label += f" (local time, UTC{_format_offset(self.utc_offset)} per the profile)"
            return (naive - self.utc_offset).replace(tzinfo=UTC), label
        if self.scale != "utc":
            label += f" ({self.scale.upper()} converted to UTC)"
        return _to_utc(naive, self.scale), label

    def dates(self, keys: tuple[str, ...], is_mid: bool) -> None:
        for key in keys:
            self.rank += 1
            value = raw_value(self.header, key, self.warnings)
            if value is None:
                continue
            try:
                parsed = _parse_date(value)
            except ValueError:
                self.warnings.append(f"{key}={value!r} is not a valid date: ignored")
                continue
            if parsed is None:
                # UT-OBS and UTC-OBS may hold a bare time of day: used with a date below.
                if key not in kw.TIME_OF_DAY_KEYWORDS or _parse_time_of_day(value) is None:
                    self.warnings.append(f"{key}={value!r} is not a date obsdb can read: ignored")
                continue
            label = key
            time, quantum, tz = parsed.time, parsed.quantum, parsed.tz
            if time is None:
                found = self._time_of_day(key)
                if found is None:
                    self.warnings.append(f"{key}={value!r} gives a date but no time of day: ignored")
                    continue
                tod_key, (time, quantum, zulu) = found
                label = f"{key}+{tod_key}"
                if zulu and tz is None:
                    tz = timedelta(0)
            try:
                instant, label = self._civil(parsed.date + time, tz, label)
            except Exception as exc:
                self.warnings.append(f"{key}={value!r} cannot be converted to UTC ({exc}): ignored")
                continue
            self._add(key, label, instant, is_mid, quantum)

    def _time_of_day(self, date_key: str) -> tuple[str, tuple[timedelta, float, bool]] | None:
        for key in kw.TIME_OF_DAY_KEYWORDS:
            if key == date_key:
                continue
            value = raw_value(self.header, key, self.warnings)
            if value is None:
                continue
            if isinstance(value, str) and _ISO.match(value):
                continue  # a full date-time, a candidate of its own
            parsed = _parse_time_of_day(value)
            if parsed is not None:
                return key, parsed
        return None

    def day_counts(self, keys: tuple[str, ...], is_mid: bool, offset: float) -> None:
        for key in keys:
            self.rank += 1
            value = raw_value(self.header, key, self.warnings)
            if value is None:
                continue
            number = as_float(value)
            if number is None:
                self.warnings.append(f"{key}={value!r} is not a number: ignored")
                continue
            mjd = number - offset
            if not -100000 < mjd < 200000:
                self.warnings.append(f"{key}={value!r} is not a plausible date: ignored")
                continue
            quantum, step = _day_count_precision(number, card_decimals(self.header, key))
            label = key if self.scale == "utc" else f"{key} ({self.scale.upper()} converted to UTC)"
            try:
                instant = _mjd_to_utc(mjd, self.scale, step)
            except Exception as exc:
                self.warnings.append(f"{key}={value!r} cannot be converted to UTC ({exc}): ignored")
                continue
            self._add(key, label, instant, is_mid, quantum)


def _format_offset(offset: timedelta) -> str:
    minutes = round(offset.total_seconds() / 60)
    sign = "+" if minutes >= 0 else "-"
    minutes = abs(minutes)
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def _fmt(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.%f").rstrip("0").rstrip(".")


def resolve_time(
    header: fits.Header,
    exptime: float | None,
    *,
    preferred: tuple[str, ...] | None = None,
    utc_offset_hours: float | None = None,
    now: datetime | None = None,
) -> ObsTime:
    """The exposure's start and mid times in UTC.

    Parameters
    ----------
    header
        The image header.
    exptime
        Exposure time in seconds (None when unknown): turns a mid time into a start and
        a start into a mid time.
    preferred
        A profile's time keywords, in order. When given, only these keywords (and the
        time-of-day keywords completing a date-only one) are used, and the first present
        wins whatever its precision; the others are still cross-checked.
    utc_offset_hours
        For cameras that write local time without saying so: hours to add to UTC to
        get the local time written (e.g. -7 for MST). Applied to date strings without an
        explicit offset, never to JD or MJD.
    now
        The present, for rejecting dates in the future (default: the clock).

    Returns
    -------
    ObsTime
        Never raises; absurd or unreadable values become warnings.
    """
    warnings: list[str] = []
    try:
        scale = _normalise_scale(raw_value(header, kw.TIMESYS_KEYWORD, warnings), warnings)
        collector = _Collector(header, scale, utc_offset_hours, warnings)
        collector.dates(kw.DATE_START_KEYWORDS, is_mid=False)
        collector.dates(kw.DATE_MID_KEYWORDS, is_mid=True)
        collector.day_counts(kw.MJD_START_KEYWORDS, is_mid=False, offset=0.0)
        collector.day_counts(kw.MJD_MID_KEYWORDS, is_mid=True, offset=0.0)
        collector.day_counts(kw.JD_START_KEYWORDS, is_mid=False, offset=JD_MJD_OFFSET)
        collector.day_counts(kw.JD_MID_KEYWORDS, is_mid=True, offset=JD_MJD_OFFSET)
        return _choose(collector.candidates, exptime, preferred, now, warnings)
    except Exception as exc:  # pragma: no cover - a last guard: a header always gives a FrameInfo
        warnings.append(f"observation time unreadable: {exc}")
        return ObsTime(None, None, None, None, tuple(warnings))


def _choose(candidates: list[_Candidate], exptime: float | None, preferred: tuple[str, ...] | None,
            now: datetime | None, warnings: list[str]) -> ObsTime:
    now = now or datetime.now(UTC)
    half = timedelta(seconds=(exptime or 0.0) / 2)

    def start(c: _Candidate) -> datetime:
        return c.instant - half if c.is_mid else c.instant

    usable = []
    for c in candidates:
        if start(c) < EARLIEST:
            warnings.append(f"{c.label} gives {_fmt(c.instant)}, before 1950: ignored")
        elif start(c) > now + timedelta(days=1):
            warnings.append(f"{c.label} gives {_fmt(c.instant)}, in the future: ignored")
        else:
            usable.append(c)
    if not usable:
        warnings.append("no usable observation time in the header")
        return ObsTime(None, None, None, None, tuple(warnings))

    if preferred:
        order = {key.upper(): i for i, key in enumerate(preferred)}
        chosen_from = sorted((c for c in usable if c.key in order), key=lambda c: order[c.key])
        if not chosen_from:
            warnings.append(f"none of the profile's time keywords ({', '.join(preferred)}) is usable")
            return ObsTime(None, None, None, None, tuple(warnings))
        best = chosen_from[0]
    else:
        best = min(usable, key=lambda c: (c.quantum, c.rank))
        # The keyword to cite: a more standard one (lower rank) that names exactly the same
        # instant (a JD computed from a whole-second DATE-OBS adds nothing), or that is
        # about as precise and agrees (DATE-OBS to 1 ms against MJD-OBS to 0.86 ms).
        same = [
            c for c in usable
            if c.rank < best.rank and c.is_mid == best.is_mid and (
                start(c) == start(best)
                or (c.quantum <= 2 * best.quantum
                    and abs((start(c) - start(best)).total_seconds()) <= max(c.quantum, best.quantum))
            )
        ]
        if same:
            best = min(same, key=lambda c: c.rank)

    agreeing = []
    for c in usable:
        if c is best:
            continue
        if (c.is_mid != best.is_mid) and exptime is None:
            continue  # cannot compare a start with a mid time without the exposure time
        diff = abs((start(c) - start(best)).total_seconds())
        if diff > max(1.0, c.quantum, best.quantum):
            warnings.append(
                f"time keywords disagree: {c.label} gives {_fmt(start(c))} and {best.label} "
                f"{_fmt(start(best))} ({diff:.3g} s apart); using {best.label}"
            )
        else:
            agreeing.append(c.label)

    source = best.label
    if best.is_mid:
        if exptime is None:
            warnings.append(f"exposure time unknown: the start is taken equal to {best.label}, a mid-exposure time")
            source += " (mid-exposure; start unknown)"
        else:
            source += " (mid-exposure, minus EXPTIME/2)"
    if agreeing:
        source += f"; agrees with {', '.join(agreeing)}"

    date_obs = start(best)
    mjd_start = datetime_to_mjd(date_obs)
    if best.is_mid:
        mjd_mid = datetime_to_mjd(best.instant)
    else:
        if exptime is None:
            warnings.append("exposure time unknown: the mid-exposure time is taken equal to the start")
        mjd_mid = mjd_start + (exptime or 0.0) / 2 / 86400.0
    return ObsTime(date_obs, mjd_start, mjd_mid, source, tuple(warnings))
