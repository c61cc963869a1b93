"""Light curves out of the database: which source, which measurements, in which units.

:func:`get` resolves a source (a position, a source id or a target name), reads its
measurements from the ``v_lightcurve`` view (migration 0005) in one parameterized query
and returns an astropy :class:`~astropy.timeseries.TimeSeries` with units, column
descriptions and the provenance of the query in ``meta``.

Conventions
-----------
- ``time`` / ``mjd``: mid-exposure, UTC (MJD). ``bjd_tdb``: barycentric Julian date in
  TDB (a full JD) when the pipeline knew the site, else NaN.
- ``mag``: the calibrated magnitude of the reported aperture, corrected to total flux.
  For a forced measurement with S/N < 3 (``is_upper_limit``), ``mag`` holds the 3-sigma
  upper limit (also in ``upper_limit``) and ``mag_err`` is NaN.
- ``flagged``: a quality bit of :data:`QUALITY_FLAGS` is set. Without
  ``include_flagged`` those rows are left out; informational bits (64 low S/N, 128
  forced, 512 not catalog-tied) never exclude a row.
- ``zero_point``: the frame's ensemble zero point, else its own catalog fit;
  ``mag = inst_mag + zero_point (+ colour term)``.
- ``fwhm``: the frame's median stellar FWHM in arcsec.

Other apertures (``aperture=R``)
--------------------------------
Every measurement keeps the flux in every aperture radius of its frame
(``frame_solutions.apertures``). With ``aperture=R`` the radius nearest R is used on each
frame (``aperture_px`` says which). For the frame's reported aperture nothing changes.
For any other radius the flux, its error and S/N are that aperture's, and the magnitude
is ``-2.5 log10(flux_R) + (mag - inst_mag)``: the measurement's own calibration (zero
point plus colour term) applied to the aperture's instrumental magnitude, with the
calibration part of the error kept. **No aperture correction is applied** to other
radii: ``frame_solutions.aperture_correction`` maps the reported aperture to total flux
and is not valid for another one, so those magnitudes are *aperture magnitudes* --
fainter than total by the light outside R, an offset that changes with seeing. They
suit differential work (comparison stars measured in the same aperture), not absolute
photometry; ``meta['aperture_note']`` says so.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any

import numpy as np
from sqlalchemy import text
from sqlalchemy.orm import Session

from obsdb import __version__
from obsdb.photometry import flags as F

__all__ = [
    "CONE_COLUMNS", "LC_COLUMNS", "QUALITY_FLAGS", "NoSourceFound", "SourceMatch", "add_phase", "cone",
    "cone_query", "get", "lightcurve_query", "parse_time", "resolve_source",
]

#: Bits that make a measurement "flagged" (left out unless ``include_flagged``): the
#: photometry itself is suspect. 64 (low S/N), 128 (forced) and 512 (relative only)
#: describe a good measurement and never exclude it.
QUALITY_FLAGS = (F.SATURATED | F.EDGE | F.BAD_PIXEL | F.COSMIC_RAY | F.BLENDED | F.CENTROID_SHIFT
                 | F.UNCALIBRATED)

#: Largest cone radius a light-curve lookup accepts (a light curve is one star).
MAX_RADIUS_ARCSEC = 3600.0

_MAG_PER_FLUX = 2.5 / math.log(10.0)

#: Columns of the light curve, in output order: (name, unit, description).
LC_COLUMNS: tuple[tuple[str, str | None, str], ...] = (
    ("mjd", "d", "Mid-exposure modified Julian date, UTC"),
    ("bjd_tdb", "d", "Mid-exposure barycentric Julian date, TDB (NaN: site unknown)"),
    ("filter", None, "Filter name as the frame header gives it"),
    ("mag", "mag", "Calibrated magnitude; the 3-sigma upper limit where is_upper_limit"),
    ("mag_err", "mag", "1-sigma error of mag (NaN for upper limits)"),
    ("is_upper_limit", None, "Forced measurement with S/N < 3: mag is an upper limit"),
    ("upper_limit", "mag", "3-sigma upper limit when not detected, else NaN"),
    ("flux", "adu", "Sky-subtracted flux in the aperture, ADU per exposure"),
    ("flux_err", "adu", "1-sigma error of flux"),
    ("snr", None, "Signal to noise ratio, flux / flux_err"),
    ("zero_point", "mag", "Zero point of the frame: mag = inst_mag + zero_point (+ colour term)"),
    ("airmass", None, "Airmass at mid-exposure"),
    ("fwhm", "arcsec", "Median stellar FWHM of the frame"),
    ("flags", None, "Flag bits (obsdb.photometry.flags): 1 saturated, 2 edge, 4 bad pixel, 8 cosmic ray, "
                    "16 blended, 32 centroid shift, 64 S/N < 5, 128 forced, 256 uncalibrated, 512 relative"),
    ("flagged", None, "A quality flag bit is set (see meta quality_flags_mask)"),
    ("forced", None, "Measured at the known position (not a detection)"),
    ("aperture_px", "pix", "Aperture radius used, pixels"),
    ("frame_id", None, "obsdb frame id"),
    ("source_id", None, "obsdb source id"),
    ("file", None, "Raw FITS file of the frame"),
)

_FIELDS = ("frame_id", "source_id", "mjd", "bjd_tdb", "filter", "mag", "mag_err", "upper_limit", "is_upper_limit",
           "flux", "flux_err", "snr", "inst_mag", "inst_mag_err", "zero_point", "zero_point_err", "airmass",
           "fwhm_arcsec", "flags", "forced", "file", "aperture_radius_px")
_APERTURE_FIELDS = ("apertures", "fluxes", "flux_errs")


class NoSourceFound(LookupError):
    """No source matches the position, source id or target name asked for."""


@dataclass(frozen=True)
class SourceMatch:
    """The source a light-curve request resolved to.

    Attributes
    ----------
    source_id : int
    ra, dec : float
        The source's position, degrees.
    distance_arcsec : float or None
        From the requested position (None for a source id or target).
    others : tuple of (int, float)
        Other sources within the radius, ``(source_id, distance_arcsec)``, nearest first.
    target : str or None
        The target name asked for.
    radius_arcsec : float or None
    """

    source_id: int
    ra: float
    dec: float
    distance_arcsec: float | None = None
    others: tuple[tuple[int, float], ...] = field(default_factory=tuple)
    target: str | None = None
    radius_arcsec: float | None = None

    @property
    def note(self) -> str | None:
        """A sentence naming the other sources within the radius, or None."""
        if not self.others:
            return None
        listed = ", ".join(f"{sid} ({d:.2f} arcsec)" for sid, d in self.others[:10])
        more = f" and {len(self.others) - 10} more" if len(self.others) > 10 else ""
        return (f"{len(self.others) + 1} sources within {self.radius_arcsec:g} arcsec: using the nearest, "
                f"source {self.source_id} ({self.distance_arcsec:.2f} arcsec); others: {listed}{more} "
                f"(use --source-id to pick one)")


def checked_text(value, what: str, max_length: int = 200) -> str:
    """A user-typed name (filter, target) as a string PostgreSQL can hold: no NUL
    character, not absurdly long. It still only ever reaches SQL as a bound parameter.

    Raises
    ------
    ValueError
        If it contains a NUL character or is longer than ``max_length``.
    """
    text_value = str(value)
    if "\x00" in text_value:
        raise ValueError(f"{what} {text_value!r} contains a NUL character")
    if len(text_value) > max_length:
        raise ValueError(f"{what} is longer than {max_length} characters")
    return text_value


@contextmanager
def _session(sessions_or_session) -> Iterator[Session]:
    if isinstance(sessions_or_session, Session):
        yield sessions_or_session
        return
    if not callable(sessions_or_session):
        raise TypeError(f"expected a Session or a sessionmaker, got {type(sessions_or_session).__name__}")
    with sessions_or_session() as session:
        yield session


_ISO_LIKE = re.compile(r"^\d{4}-\d{2}-\d{2}([T ][0-9:.]+)?(Z|[+-]\d{2}:?\d{2})?$")


def parse_time(value) -> float | None:
    """A time given by a person, as an MJD (UTC).

    Parameters
    ----------
    value : None, float, int, str, datetime.datetime, datetime.date or astropy.time.Time
        A number (or a string holding one) is an MJD; a string otherwise must be an ISO
        date or date-time (``2024-05-01``, ``2024-05-01T22:30:00``, ``...Z`` or with an
        offset); naive date-times are UTC; a date is its 00:00 UTC.

    Returns
    -------
    float or None
        None when ``value`` is None.

    Raises
    ------
    ValueError
        If the value is not a time (with what to give instead).
    """
    if value is None:
        return None
    hint = "give an ISO date or date-time in UTC (2024-05-01 or 2024-05-01T22:30) or an MJD (60431.9)"
    if isinstance(value, bool):
        raise ValueError(f"cannot read the time {value!r}: {hint}")
    if isinstance(value, (int, float, np.integer, np.floating)):
        mjd = float(value)
    elif isinstance(value, datetime):
        when = value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)
        mjd = _datetime_to_mjd(when)
    elif isinstance(value, date):
        mjd = _datetime_to_mjd(datetime(value.year, value.month, value.day, tzinfo=timezone.utc))
    elif hasattr(value, "utc") and hasattr(value, "mjd"):  # astropy Time
        mjd = float(value.utc.mjd)
    elif isinstance(value, str):
        s = value.strip()
        try:
            mjd = float(s)
        except ValueError:
            if len(s) > 40 or not _ISO_LIKE.match(s):
                raise ValueError(f"cannot read the time {value!r}: {hint}") from None
            try:
                when = datetime.fromisoformat(s.replace("Z", "+00:00"))
            except ValueError:
                raise ValueError(f"cannot read the time {value!r}: {hint}") from None
            if when.tzinfo is None:
                when = when.replace(tzinfo=timezone.utc)
            mjd = _datetime_to_mjd(when)
    else:
        raise ValueError(f"cannot read the time {value!r}: {hint}")
    if not math.isfinite(mjd) or not -100000.0 < mjd < 200000.0:
        raise ValueError(f"the time {value!r} is not a plausible MJD: {hint}")
    return mjd


def _datetime_to_mjd(when: datetime) -> float:
    epoch = datetime(1858, 11, 17, tzinfo=timezone.utc)
    delta = when.astimezone(timezone.utc) - epoch
    return delta.days + (delta.seconds + delta.microseconds / 1e6) / 86400.0


def resolve_source(session: Session, *, ra: float | None = None, dec: float | None = None,
                   radius_arcsec: float = 2.0, source_id: int | None = None,
                   target: str | None = None) -> SourceMatch:
    """Which source a request means: the nearest within a cone, an id, or a target.

    Parameters
    ----------
    session : sqlalchemy.orm.Session
    ra, dec : float, optional
        ICRS degrees (see :func:`obsdb.catalog.positions.parse_position` for text).
    radius_arcsec : float
        Cone radius around (ra, dec), 0 < radius <= 3600.
    source_id : int, optional
    target : str, optional
        A target name (exact; else case-insensitive when that is unique).

    Returns
    -------
    SourceMatch

    Raises
    ------
    ValueError
        Not exactly one of position / source_id / target, or a bad position or radius.
    NoSourceFound
        Nothing there, no such id, or no such target.
    """
    given = sum(x is not None for x in (source_id, target)) + (ra is not None or dec is not None)
    if given != 1:
        raise ValueError("give exactly one of a position (ra and dec), a source id or a target name")
    if source_id is not None:
        try:
            sid = int(source_id)
        except (TypeError, ValueError):
            raise ValueError(f"source id must be an integer, got {source_id!r}") from None
        row = session.execute(text("SELECT id, ra, dec FROM sources WHERE id = :id"), {"id": sid}).first()
        if row is None:
            raise NoSourceFound(f"no source with id {sid}")
        return SourceMatch(int(row.id), float(row.ra), float(row.dec))
    if target is not None:
        name = checked_text(target, "target name").strip()
        rows = session.execute(
            text("SELECT t.name, s.id, s.ra, s.dec FROM targets AS t JOIN sources AS s ON s.id = t.source_id "
                 "WHERE t.name = :name OR lower(t.name) = lower(:name) ORDER BY (t.name = :name) DESC, t.name"),
            {"name": name},
        ).all()
        exact = [r for r in rows if r.name == name]
        chosen = exact[0] if exact else (rows[0] if len(rows) == 1 else None)
        if chosen is None:
            if rows:
                raise NoSourceFound(f"target {name!r} is ambiguous: {', '.join(r.name for r in rows)}")
            raise NoSourceFound(f"no target named {name!r} (`obsdb targets` lists them)")
        return SourceMatch(int(chosen.id), float(chosen.ra), float(chosen.dec), target=chosen.name)
    if ra is None or dec is None:
        raise ValueError("a position needs both ra and dec")
    ra, dec = float(ra), float(dec)
    radius = float(radius_arcsec)
    if not (math.isfinite(ra) and math.isfinite(dec)) or not -90.0 <= dec <= 90.0:
        raise ValueError(f"position ({ra}, {dec}) is not on the sky")
    if not (math.isfinite(radius) and 0.0 < radius <= MAX_RADIUS_ARCSEC):
        raise ValueError(f"radius must be between 0 and {MAX_RADIUS_ARCSEC:g} arcsec, got {radius_arcsec!r}")
    rows = cone(session, ra % 360.0, dec, radius)
    if not rows:
        raise NoSourceFound(f"no source within {radius:g} arcsec of RA {ra:.6f} Dec {dec:+.6f} "
                            "(try a larger --radius, or `obsdb sources cone`)")
    best = rows[0]
    return SourceMatch(best["source_id"], best["ra"], best["dec"], best["distance_arcsec"],
                       tuple((r["source_id"], r["distance_arcsec"]) for r in rows[1:]), radius_arcsec=radius)


#: Columns of :func:`cone`.
CONE_COLUMNS = ("source_id", "ra", "dec", "distance_arcsec", "n_measurements", "targets")


def cone(session: Session, ra: float, dec: float, radius_arcsec: float, *,
         with_counts: bool = False) -> list[dict[str, Any]]:
    """Sources within ``radius_arcsec`` of (ra, dec), nearest first.

    What the SQL function ``obsdb_source_cone`` returns (HEALPix range scans, exact
    distance; see :func:`cone_query`); ``with_counts`` adds each source's number of
    measurements and its target names.

    Raises
    ------
    ValueError
        If the position or radius is not usable.
    """
    if not (math.isfinite(ra) and math.isfinite(dec)) or not -90.0 <= dec <= 90.0:
        raise ValueError(f"position ({ra}, {dec}) is not on the sky")
    if not (math.isfinite(radius_arcsec) and 0.0 < radius_arcsec <= 180.0 * 3600.0):
        raise ValueError(f"radius must be a positive number of arcsec, got {radius_arcsec!r}")
    sql, params = cone_query(ra, dec, radius_arcsec, with_counts=with_counts)
    rows = session.execute(text(sql), params).mappings().all()
    out = []
    for r in rows:
        d = {"source_id": int(r["source_id"]), "ra": float(r["ra"]), "dec": float(r["dec"]),
             "distance_arcsec": float(r["distance_arcsec"])}
        if with_counts:
            d["n_measurements"] = int(r["n_measurements"])
            d["targets"] = r["targets"]
        out.append(d)
    return out


def cone_query(ra: float, dec: float, radius_arcsec: float, *, with_counts: bool = False) -> tuple[str, dict]:
    """The SQL :func:`cone` runs, and its parameters.

    The same search as the SQL function ``obsdb_source_cone`` (migration 0005): one
    fenced range scan of ``ix_sources_healpix`` per HEALPix range, then the exact
    distance (``obsdb_ang_sep_deg``) -- but with the ranges computed here, by
    :func:`obsdb.catalog.healpix.cone_ranges`, which gives the same ranges as
    ``obsdb_healpix_ranges``. Each ``obsdb`` command opens a new connection, and the first
    call of the PL/pgSQL HEALPix functions in a connection compiles them (7-12 ms, more
    than the whole light curve); ``obsdb_ang_sep_deg`` is plain SQL and is inlined.
    ``tests/test_lightcurves.py`` checks that both searches return the same sources.
    """
    from obsdb.catalog.healpix import cone_ranges

    ra = float(ra) % 360.0
    radius_deg = float(radius_arcsec) / 3600.0
    ranges = cone_ranges(ra, float(dec), radius_deg)
    extra = ""
    if with_counts:
        extra = (", (SELECT count(*) FROM measurements AS m WHERE m.source_id = s.id) AS n_measurements, "
                 "(SELECT string_agg(t.name, ',' ORDER BY t.name) FROM targets AS t "
                 "WHERE t.source_id = s.id) AS targets")
    sql = ("SELECT s.id AS source_id, s.ra, s.dec, 3600.0 * obsdb_ang_sep_deg(:ra, :dec, s.ra, s.dec) "
           f"AS distance_arcsec{extra} "
           "FROM unnest(CAST(:lo AS bigint[]), CAST(:hi AS bigint[])) AS r(lo, hi) "
           "CROSS JOIN LATERAL (SELECT c.id, c.ra, c.dec FROM sources AS c "
           "                    WHERE c.healpix BETWEEN r.lo AND r.hi OFFSET 0) AS s "
           "WHERE obsdb_ang_sep_deg(:ra, :dec, s.ra, s.dec) <= :radius "
           "ORDER BY 4, 1")
    return sql, {"ra": ra, "dec": float(dec), "radius": radius_deg,
                 "lo": [int(lo) for lo, _ in ranges], "hi": [int(hi) for _, hi in ranges]}


def get(sessions_or_session, *, ra: float | None = None, dec: float | None = None, radius_arcsec: float = 2.0,
        source_id: int | None = None, target: str | None = None, filters: Sequence[str] | str | None = None,
        since=None, until=None, aperture: float | None = None, include_flagged: bool = False):
    """The light curve of one source as an astropy ``TimeSeries``.

    Parameters
    ----------
    sessions_or_session : sqlalchemy.orm.Session or sessionmaker
        A session (used as is, not committed) or a factory (a session is opened and
        closed here).
    ra, dec : float, optional
        ICRS degrees: the nearest source within ``radius_arcsec``; the others within the
        radius are named in ``meta['note']``.
    radius_arcsec : float
        Cone radius for a position (default 2).
    source_id : int, optional
    target : str, optional
        A target name (``obsdb targets``).
    filters : str or sequence of str, optional
        Only these filters (names as the headers give them).
    since, until : optional
        Only measurements at or after / at or before this time: MJD (UTC) number,
        ISO date or date-time string (UTC), ``datetime`` or astropy ``Time``.
    aperture : float, optional
        Aperture radius in pixels: the nearest aperture of each frame instead of the
        reported one (see the module docstring: no aperture correction for other radii).
    include_flagged : bool
        Keep measurements with a quality flag (:data:`QUALITY_FLAGS`); they are marked in
        the ``flagged`` column.

    Returns
    -------
    astropy.timeseries.TimeSeries
        ``time`` (UTC, mid-exposure) and the columns of :data:`LC_COLUMNS`, sorted by
        time; ``meta`` holds the source, the request and notes.

    Raises
    ------
    NoSourceFound
        Nothing at the position, no such source id or target.
    ValueError
        Conflicting or unusable arguments (position, radius, times, aperture).
    """
    if isinstance(filters, str):
        filters = [filters]
    filter_list = None if filters is None else [checked_text(f, "filter name") for f in filters]
    if filter_list is not None and not filter_list:
        filter_list = None
    since_mjd, until_mjd = parse_time(since), parse_time(until)
    if since_mjd is not None and until_mjd is not None and since_mjd > until_mjd:
        raise ValueError(f"since ({since}) is after until ({until})")
    if aperture is not None:
        aperture = float(aperture)
        if not (math.isfinite(aperture) and aperture > 0):
            raise ValueError(f"aperture must be a positive radius in pixels, got {aperture!r}")
    with _session(sessions_or_session) as session:
        match = resolve_source(session, ra=ra, dec=dec, radius_arcsec=radius_arcsec, source_id=source_id,
                               target=target)
        rows = _fetch(session, match.source_id, filter_list, since_mjd, until_mjd, aperture is not None,
                      include_flagged)
        available = None
        if not rows:
            available = list(session.scalars(text(
                "SELECT DISTINCT filter FROM v_lightcurve WHERE source_id = :id AND filter IS NOT NULL ORDER BY 1"),
                {"id": match.source_id}))
    cols = _columns(rows, aperture)
    ts = _timeseries(cols)
    ts.meta.update(_meta(match, filter_list, since_mjd, until_mjd, aperture, include_flagged, len(ts), available))
    return ts


def lightcurve_query(source_id: int, *, filters: Sequence[str] | None = None, since: float | None = None,
                     until: float | None = None, with_apertures: bool = False,
                     include_flagged: bool = False) -> tuple[str, dict[str, Any]]:
    """The SQL :func:`get` runs for one source, and its bound parameters.

    Every value arrives as a parameter; the statement text is built from fixed pieces
    only. (Public so that benchmarks and ``EXPLAIN`` can run exactly this statement.)
    """
    fields = _FIELDS + (_APERTURE_FIELDS if with_apertures else ())
    where = ["source_id = :source_id"]
    params: dict[str, Any] = {"source_id": int(source_id)}
    if filters is not None:
        where.append("filter = ANY(CAST(:filters AS text[]))")
        params["filters"] = list(filters)
    if since is not None:
        where.append("mjd >= :since")
        params["since"] = float(since)
    if until is not None:
        where.append("mjd <= :until")
        params["until"] = float(until)
    if not include_flagged:
        where.append("(flags & :mask) = 0")
        params["mask"] = QUALITY_FLAGS
    sql = f"SELECT {', '.join(fields)} FROM v_lightcurve WHERE {' AND '.join(where)} ORDER BY mjd, frame_id"
    return sql, params


def _fetch(session: Session, source_id: int, filters, since, until, with_apertures: bool,
           include_flagged: bool) -> list:
    sql, params = lightcurve_query(source_id, filters=filters, since=since, until=until,
                                   with_apertures=with_apertures, include_flagged=include_flagged)
    return session.execute(text(sql), params).all()


def _floats(rows, name: str) -> np.ndarray:
    return np.array([np.nan if getattr(r, name) is None else getattr(r, name) for r in rows], dtype=float)


def _columns(rows, aperture: float | None) -> dict[str, np.ndarray]:
    n = len(rows)
    c: dict[str, np.ndarray] = {}
    for name in ("mjd", "bjd_tdb", "mag", "mag_err", "upper_limit", "flux", "flux_err", "snr", "inst_mag",
                 "inst_mag_err", "zero_point", "zero_point_err", "airmass", "fwhm_arcsec", "aperture_radius_px"):
        c[name] = _floats(rows, name)
    c["filter"] = np.array([r.filter or "" for r in rows], dtype=object)
    c["file"] = np.array([r.file for r in rows], dtype=object)
    c["flags"] = np.array([r.flags for r in rows], dtype=np.int64)
    c["forced"] = np.array([bool(r.forced) for r in rows], dtype=bool)
    c["is_upper_limit"] = np.array([bool(r.is_upper_limit) for r in rows], dtype=bool)
    c["frame_id"] = np.array([r.frame_id for r in rows], dtype=np.int64)
    c["source_id"] = np.array([r.source_id for r in rows], dtype=np.int64)
    c["aperture_px"] = c.pop("aperture_radius_px")
    if aperture is not None and n:
        _other_aperture(rows, c, aperture)
    ul = c["is_upper_limit"]
    c["mag"] = np.where(ul, c["upper_limit"], c["mag"])
    c["mag_err"] = np.where(ul, np.nan, c["mag_err"])
    c["upper_limit"] = np.where(ul, c["upper_limit"], np.nan)
    c["flagged"] = (c["flags"] & QUALITY_FLAGS) != 0
    c["fwhm"] = c.pop("fwhm_arcsec")
    return c


def _other_aperture(rows, c: dict[str, np.ndarray], radius: float) -> None:
    """Replace flux, mag and their errors by those of the aperture nearest ``radius``."""
    for k, r in enumerate(rows):
        radii = np.asarray(r.apertures if r.apertures is not None else [], dtype=float)
        if radii.size == 0 or r.fluxes is None:
            continue
        i = int(np.argmin(np.abs(radii - radius)))
        if radii[i] == c["aperture_px"][k]:
            continue  # the reported aperture: calibrated and aperture-corrected as stored
        c["aperture_px"][k] = radii[i]
        f = np.nan if r.fluxes[i] is None else float(r.fluxes[i])
        fe = np.nan if r.flux_errs is None or r.flux_errs[i] is None else float(r.flux_errs[i])
        calib = c["mag"][k] - c["inst_mag"][k]
        if not np.isfinite(calib):
            calib = c["zero_point"][k]
        cal_var = c["mag_err"][k] ** 2 - c["inst_mag_err"][k] ** 2
        if not np.isfinite(cal_var):
            cal_var = c["zero_point_err"][k] ** 2 if np.isfinite(c["zero_point_err"][k]) else 0.0
        cal_var = max(cal_var, 0.0)
        snr = f / fe if fe > 0 else np.nan
        inst = -2.5 * math.log10(f) if f > 0 else np.nan
        inst_err = _MAG_PER_FLUX * fe / f if f > 0 else np.nan
        c["flux"][k], c["flux_err"][k], c["snr"][k] = f, fe, snr
        c["inst_mag"][k], c["inst_mag_err"][k] = inst, inst_err
        c["mag"][k] = inst + calib
        c["mag_err"][k] = math.sqrt(inst_err ** 2 + cal_var) if np.isfinite(inst_err) else np.nan
        faint = not (snr >= 3.0)
        c["upper_limit"][k] = (-2.5 * math.log10(max(f, 0.0) + 3.0 * fe) + calib
                               if faint and np.isfinite(fe) and fe > 0 else np.nan)
        c["is_upper_limit"][k] = bool(c["forced"][k] and faint)


def _timeseries(c: dict[str, np.ndarray]):
    from astropy import units as u
    from astropy.table import Column
    from astropy.time import Time
    from astropy.timeseries import TimeSeries

    ts = TimeSeries(time=Time(c["mjd"], format="mjd", scale="utc"))
    for name, unit, description in LC_COLUMNS:
        values = c[name]
        if values.dtype == object:
            values = values.astype(str) if len(values) else np.array([], dtype=str)
        if unit is not None:
            ts[name] = values * u.Unit(unit)
            ts[name].info.description = description
        else:
            ts[name] = Column(values, description=description)
    ts["time"].info.description = "Mid-exposure time, UTC"
    return ts


def _meta(match: SourceMatch, filters, since, until, aperture, include_flagged, n, available) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "source_id": match.source_id,
        "source_ra": match.ra,
        "source_dec": match.dec,
        "target": match.target,
        "distance_arcsec": match.distance_arcsec,
        "radius_arcsec": match.radius_arcsec,
        "other_sources": [{"source_id": s, "distance_arcsec": d} for s, d in match.others],
        "note": match.note,
        "filters": filters,
        "since_mjd": since,
        "until_mjd": until,
        "aperture_px_requested": aperture,
        "include_flagged": include_flagged,
        "quality_flags_mask": QUALITY_FLAGS,
        "flag_bits": {str(bit): name for bit, name in F.NAMES.items()},
        "n_points": n,
        "time_note": "time and mjd: mid-exposure UTC; bjd_tdb: barycentric JD in TDB",
        "obsdb_version": __version__,
    }
    if aperture is not None:
        meta["aperture_note"] = (
            "mag for apertures other than each frame's reported one are aperture magnitudes: the measurement's "
            "calibration (zero point and colour term) is applied, the aperture correction to total flux is not")
    if available is not None:
        meta["available_filters"] = available
    return meta


def add_phase(ts, period: float, epoch: float | None = None, *, time_column: str | None = None):
    """Add a ``phase`` column (0 <= phase < 1) folded at ``period`` days, in place.

    Parameters
    ----------
    ts : astropy.timeseries.TimeSeries
        A light curve from :func:`get`.
    period : float
        Days, > 0.
    epoch : float, optional
        Time of phase 0 in the same scale as the time used (default: the first point).
    time_column : str, optional
        ``"bjd_tdb"`` or ``"mjd"``; default BJD_TDB when every point has it, else MJD.

    Returns
    -------
    astropy.timeseries.TimeSeries
        ``ts``, with ``phase`` and ``meta['fold']``.

    Raises
    ------
    ValueError
        If the period is not a positive number.
    """
    period = float(period)
    if not (math.isfinite(period) and period > 0):
        raise ValueError(f"the period must be a positive number of days, got {period!r}")
    t, column = fold_time(ts, time_column)
    t0 = float(epoch) if epoch is not None else (float(np.nanmin(t)) if len(t) else 0.0)
    ts["phase"] = np.mod((t - t0) / period, 1.0)
    ts["phase"].info.description = f"Phase at period {period} d from epoch {t0} ({column})"
    ts.meta["fold"] = {"period_days": period, "epoch": t0, "time": column}
    return ts


def fold_time(ts, time_column: str | None = None) -> tuple[np.ndarray, str]:
    """The times to fold or search for periods: BJD_TDB when every point has it, else MJD."""
    bjd = np.asarray(ts["bjd_tdb"].value if hasattr(ts["bjd_tdb"], "value") else ts["bjd_tdb"], dtype=float)
    mjd = np.asarray(ts["mjd"].value if hasattr(ts["mjd"], "value") else ts["mjd"], dtype=float)
    if time_column is None:
        time_column = "bjd_tdb" if len(bjd) and np.all(np.isfinite(bjd)) else "mjd"
    if time_column == "bjd_tdb":
        return bjd, "bjd_tdb"
    if time_column == "mjd":
        return mjd, "mjd"
    raise ValueError(f"time_column must be 'bjd_tdb' or 'mjd', got {time_column!r}")
