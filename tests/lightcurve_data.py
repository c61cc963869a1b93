"""A small, consistent photometric database for the light-curve and SQL-access tests.

:func:`fill` writes, with COPY, what the photometry pipeline would have left after a few
nights on one field in two filters: an instrument, bias and flat masters, light frames
(with reductions, frame solutions and zero points), a few failed frames, sources and
their measurements in five apertures. Every number follows the pipeline's conventions
(``obsdb.photometry.measure_stage``), so values read back can be checked exactly:

- growth curve ``g(r) = 1 - exp(-r^2 / 2 sigma^2)`` with ``sigma = fwhm / 2.3548``;
  ``fluxes[i] = F * g(r_i) * noise`` for total flux ``F = 10^(-0.4 (m - Z))``;
- ``aperture_correction = 2.5 log10(g(r_k))`` of the reported aperture ``k``, so the
  stored ``inst_mag = -2.5 log10(fluxes[k]) - aperture_correction`` is the total;
- ``mag = inst_mag + Z`` with ``Z = zeropoints.ensemble_zp`` (the frame's own ``zp`` is
  ``Z + 0.01``, and where ``ensemble_zp`` is NULL -- every tenth frame -- ``zp`` is used).

Sources (see :class:`Truth`): a sinusoidal variable of known period and one of another
period, constant stars from 12th to 17th magnitude, a constant star with a few flagged
(saturated, cosmic-ray) outliers, three sources within a few arcsec of one spot, and a
target named with an apostrophe whose forced photometry is below S/N 3 (upper limits)
for the first half of the run and detected afterwards.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import psycopg
import pytest

from obsdb.catalog.healpix import healpix_index
from obsdb.photometry import flags as F
from obsdb.photometry.times import bjd_tdb, site_location

FIELD_RA, FIELD_DEC = 150.0, 20.0
FILTERS = ("V", "R")
APERTURES = (3.0, 4.0, 6.0, 8.0, 10.0)
REPORTED = 2  # 0-based: 6 px
PIXEL_SCALE = 0.8  # arcsec / px
FIRST_NIGHT = date(2024, 3, 1)
N_NIGHTS = 8
FRAMES_PER_NIGHT_PER_FILTER = 16
SITE = site_location(40.0, -3.0, 800.0)

VAR_PERIOD = 0.3712345  # days
VAR_AMPLITUDE = 0.25  # semi-amplitude, mag
VAR2_PERIOD = 1.734
VAR2_AMPLITUDE = 0.12
TARGET_NAME = "O'Brien's transient"


@dataclass
class Truth:
    """What :func:`fill` wrote."""

    variable: int = 0
    variable2: int = 0
    constants: list[int] = field(default_factory=list)
    flagged_star: int = 0
    flagged_frames: list[int] = field(default_factory=list)  # frames where flagged_star is flagged
    cluster: list[int] = field(default_factory=list)  # nearest first from CLUSTER_POS
    cluster_pos: tuple[float, float] = (0.0, 0.0)
    cluster_distances: list[float] = field(default_factory=list)  # arcsec
    target: int = 0
    target_name: str = TARGET_NAME
    positions: dict[int, tuple[float, float]] = field(default_factory=dict)
    frames: list[int] = field(default_factory=list)  # light frames with measurements
    frame_filter: dict[int, str] = field(default_factory=dict)
    failed_frames: dict[int, str] = field(default_factory=dict)  # id -> reason
    n_measurements: int = 0
    nights: list[date] = field(default_factory=list)
    empty_pos: tuple[float, float] = (FIELD_RA + 0.5, FIELD_DEC - 0.5)


def _offset(ra, dec, east_arcsec, north_arcsec):
    return ra + east_arcsec / 3600.0 / math.cos(math.radians(dec)), dec + north_arcsec / 3600.0


def _growth(r, fwhm_px):
    sigma = fwhm_px / 2.3548
    return 1.0 - np.exp(-(np.asarray(r) ** 2) / (2 * sigma**2))


def _copy(cur, table: str, columns: list[str], rows) -> None:
    with cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as cp:
        for row in rows:
            cp.write_row(row)


def fill(url: str, seed: int = 7) -> Truth:
    """Write the synthetic night set into the (migrated, empty) database at ``url``.

    Parameters
    ----------
    url : str
        libpq or SQLAlchemy URL (``postgresql+psycopg://`` is accepted).
    seed : int
        Noise seed; the same seed gives the same rows.

    Returns
    -------
    Truth
    """
    url = url.replace("postgresql+psycopg://", "postgresql://")
    rng = np.random.default_rng(seed)
    truth = Truth()

    # --- sources ------------------------------------------------------------------------
    src: list[tuple[int, float, float, float, str]] = []  # id, ra, dec, mean mag, kind

    def add(ra, dec, mag, kind):
        sid = len(src) + 1
        src.append((sid, ra, dec, mag, kind))
        truth.positions[sid] = (ra, dec)
        return sid

    truth.variable = add(150.1234, 20.0567, 14.0, "var")
    truth.variable2 = add(149.93, 19.95, 13.5, "var2")
    for k in range(14):
        ang = 2 * math.pi * k / 14
        ra, dec = _offset(FIELD_RA, FIELD_DEC, 500 * math.cos(ang) + 37 * k, 500 * math.sin(ang) - 23 * k)
        truth.constants.append(add(ra, dec, 12.0 + 5.0 * k / 13, "const"))
    truth.flagged_star = add(*_offset(FIELD_RA, FIELD_DEC, -200, 300), 13.0, "flagged")
    truth.constants.append(truth.flagged_star)
    cluster_pos = _offset(FIELD_RA, FIELD_DEC, 900, 100)
    truth.cluster_pos = cluster_pos
    for east, north in ((0.4, 0.3), (1.2, -1.1), (-2.5, 1.8)):
        sid = add(*_offset(*cluster_pos, east, north), 15.0, "const")
        truth.cluster.append(sid)
        truth.cluster_distances.append(math.hypot(east, north))
    truth.target = add(*_offset(FIELD_RA, FIELD_DEC, -700, -600), 0.0, "target")

    # --- frames -------------------------------------------------------------------------
    frames = []  # dicts
    fid = 0
    masters = []
    for night_no in range(N_NIGHTS):
        night = FIRST_NIGHT + timedelta(days=night_no)
        truth.nights.append(night)
        start = datetime(night.year, night.month, night.day, 20, 0, tzinfo=timezone.utc)
        masters.append(dict(id=2 * night_no + 1, kind="bias", filter=None, night=night))
        masters.append(dict(id=2 * night_no + 2, kind="flat", filter="V", night=night))
        n_light = FRAMES_PER_NIGHT_PER_FILTER * len(FILTERS)
        for j in range(n_light + 3):
            fid += 1
            when = start + timedelta(minutes=j * 420 / (n_light + 2)) + timedelta(seconds=float(rng.uniform(0, 60)))
            filt = FILTERS[j % 2]
            frame = dict(id=fid, when=when, filter=filt, night=night, imagetyp="light", state="measured",
                         reason=None, bias=2 * night_no + 1, flat=2 * night_no + 2)
            if j >= n_light:  # the last three frames of a night: two failures and a bias
                if j == n_light:
                    frame.update(state="failed", reason="astrometry: 3 matches, need 6 (clouds?)")
                elif j == n_light + 1:
                    frame.update(state="needs_wcs", reason="no WCS and no solved frame of this field")
                else:
                    frame.update(imagetyp="bias", state="combined", filter=None)
                if frame["reason"]:
                    truth.failed_frames[fid] = frame["reason"]
            frames.append(frame)

    light = [f for f in frames if f["imagetyp"] == "light" and f["state"] == "measured"]
    for f in frames:
        f["mjd"] = (f["when"] - datetime(1858, 11, 17, tzinfo=timezone.utc)).total_seconds() / 86400.0 + 30 / 86400
        hours = (f["when"].hour + f["when"].minute / 60 - 20) % 24
        f["airmass"] = 1.0 + 0.6 * ((hours - 3.5) / 3.5) ** 2
        f["fwhm"] = float(rng.uniform(2.5, 4.5))  # px
        f["sky"] = float(rng.uniform(200, 600))
        f["Z"] = 25.0 - 0.2 * f["airmass"] + float(rng.normal(0, 0.02)) - (0.4 if f["filter"] == "R" else 0.0)
    truth.frames = [f["id"] for f in light]
    truth.frame_filter = {f["id"]: f["filter"] for f in light}

    with psycopg.connect(url) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO instruments (id, name, profile) VALUES (1, 'synthcam', 'generic')")
        _copy(cur, "frames", ["id", "instrument_id", "path", "sha256", "size_bytes", "file_mtime", "header",
                              "imagetyp", "object", "filter", "exptime", "naxis1", "naxis2", "date_obs",
                              "mjd_start", "mjd_mid", "night", "ra", "dec", "airmass", "has_wcs", "pixel_scale",
                              "state", "state_reason"],
              ([f["id"], 1, f"/data/{f['night']}/synth_{f['filter'] or 'B'}_{f['id']:04d}.fits",
                f"{f['id']:064x}", 8_000_000, f["when"], json.dumps({"OBJECT": "FIELD1"}), f["imagetyp"],
                "FIELD1" if f["imagetyp"] == "light" else None, f["filter"], 60.0, 2048, 2048, f["when"],
                f["mjd"] - 30 / 86400, f["mjd"], f["night"], FIELD_RA, FIELD_DEC, f["airmass"], True,
                PIXEL_SCALE, f["state"], f["reason"]] for f in frames))
        _copy(cur, "masters", ["id", "group_key", "instrument_id", "kind", "filter", "xbinning", "ybinning",
                               "naxis1", "naxis2", "night", "n_inputs", "stats", "path", "obsdb_version",
                               "config_hash"],
              ([m["id"], f"synth/{m['kind']}/{m['night']}", 1, m["kind"], m["filter"], 1, 1, 2048, 2048,
                m["night"], 11, json.dumps({"median": 1000.0}), f"/products/masters/{m['kind']}_{m['night']}.fits",
                "test", "x"] for m in masters))
        measured = [f for f in frames if f["imagetyp"] == "light"]
        _copy(cur, "reductions", ["id", "frame_id", "path", "bias_id", "flat_id", "steps", "sky", "sky_rms",
                                  "obsdb_version", "config_hash"],
              ([f["id"], f["id"], f"/products/reduced/{f['id']:04d}.fits", f["bias"], f["flat"],
                ["bias", "flat"], f["sky"], 12.0, "test", "x"] for f in measured))
        _copy(cur, "frame_solutions", ["frame_id", "reduction_id", "field", "wcs_header", "method", "ra_center",
                                       "dec_center", "radius_deg", "pixel_scale", "fwhm", "sky", "sky_rms",
                                       "n_detections", "aperture_correction", "apertures", "aperture_index",
                                       "annulus", "airmass", "mjd_mid", "obsdb_version", "config_hash"],
              ([f["id"], f["id"], "FIELD1", "", "refcat", FIELD_RA, FIELD_DEC, 0.35, PIXEL_SCALE, f["fwhm"],
                f["sky"], 12.0, 500, 2.5 * math.log10(_growth(APERTURES[REPORTED], f["fwhm"])), list(APERTURES),
                REPORTED, [15.0, 25.0], f["airmass"], f["mjd"], "test", "x"] for f in light))
        _copy(cur, "zeropoints", ["frame_id", "filter", "band", "zp", "zp_err", "n_stars", "ensemble_zp",
                                  "ensemble_zp_err", "lim_mag_3", "lim_mag_5", "lim_mag_10"],
              ([f["id"], f["filter"], f["filter"], f["Z"] + 0.01, 0.01, 40,
                None if k % 10 == 9 else f["Z"], None if k % 10 == 9 else 0.003,
                f["Z"] - 5.5, f["Z"] - 6.0, f["Z"] - 6.8] for k, f in enumerate(light)))
        for k, f in enumerate(light):
            f["Zused"] = f["Z"] + 0.01 if k % 10 == 9 else f["Z"]
        _copy(cur, "sources", ["id", "ra", "dec", "healpix", "first_frame_id"],
              ([sid, ra, dec, int(healpix_index(ra, dec)), light[0]["id"]] for sid, ra, dec, _, _ in src))
        cur.execute("INSERT INTO targets (id, name, ra, dec, source_id) VALUES (1, %s, %s, %s, %s)",
                    (TARGET_NAME, *truth.positions[truth.target], truth.target))

        rows = []
        t_first = light[0]["mjd"]
        t_mid = (light[0]["mjd"] + light[-1]["mjd"]) / 2
        flag_cycle = [F.SATURATED, F.COSMIC_RAY | F.LOW_SNR, F.BLENDED]
        for f in light:
            bjd = bjd_tdb(f["mjd"], [s[1] for s in src], [s[2] for s in src], SITE)
            g = _growth(np.asarray(APERTURES), f["fwhm"])
            apcorr = 2.5 * math.log10(g[REPORTED])
            for n, (sid, ra, dec, m0, kind) in enumerate(src):
                flags = 0
                forced = kind == "target"
                m_true = m0
                if kind == "var":
                    m_true = m0 + VAR_AMPLITUDE * math.sin(2 * math.pi * (f["mjd"] - t_first) / VAR_PERIOD)
                elif kind == "var2":
                    m_true = m0 + VAR2_AMPLITUDE * math.sin(2 * math.pi * (f["mjd"] - t_first) / VAR2_PERIOD)
                elif kind == "target":
                    m_true = 22.5 if f["mjd"] < t_mid else 15.0
                total = 10 ** (-0.4 * (m_true - f["Z"]))
                # CCD-equation-like error of the reported aperture (sky-limited when faint).
                ap_flux = total * g
                ap_err = np.sqrt(ap_flux / 2.0 + (np.pi * np.asarray(APERTURES) ** 2) * 60.0 ** 2)
                noise = rng.normal(0.0, 1.0)
                fluxes = ap_flux + noise * ap_err
                flux, flux_err = float(fluxes[REPORTED]), float(ap_err[REPORTED])
                snr = flux / flux_err
                inst = -2.5 * math.log10(flux) - apcorr if flux > 0 else None
                inst_err = 1.0857362 * flux_err / flux if flux > 0 else None
                mag = inst + f["Zused"] if inst is not None else None
                mag_err = math.hypot(inst_err, 0.003) if inst_err is not None else None
                upper = None
                if snr < 3:
                    upper = -2.5 * math.log10(max(flux, 0.0) + 3 * flux_err) - apcorr + f["Zused"]
                if forced:
                    flags |= F.FORCED
                if snr < 5:
                    flags |= F.LOW_SNR
                if kind == "flagged" and f["id"] % 9 == 0:
                    bit = flag_cycle[len(truth.flagged_frames) % 3]
                    flags |= bit
                    truth.flagged_frames.append(f["id"])
                    mag = (mag or 0) - 0.8  # an outlier the flag explains
                rows.append([f["id"], sid, float(rng.normal(1000, 500)), float(rng.normal(1000, 500)), ra, dec,
                             f["mjd"], float(bjd[n]), [float(v) for v in fluxes], [float(v) for v in ap_err],
                             flux, flux_err, f["sky"], snr, inst, inst_err, mag, mag_err, upper, flags, forced])
        _copy(cur, "measurements", ["frame_id", "source_id", "x", "y", "ra", "dec", "mjd", "bjd_tdb", "fluxes",
                                    "flux_errs", "flux", "flux_err", "background", "snr", "inst_mag",
                                    "inst_mag_err", "mag", "mag_err", "upper_limit", "flags", "forced"], rows)
        truth.n_measurements = len(rows)
        for table in ("instruments", "frames", "masters", "reductions", "sources", "targets"):
            cur.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")
        conn.commit()
    return truth


@contextmanager
def filled_database(pg_admin_url: str, template: str, seed: int = 7) -> Iterator[tuple[str, Truth]]:
    """A new database (copied from the migrated template) filled by :func:`fill`.

    Yields ``(sqlalchemy_url, truth)`` and drops the database afterwards; for
    module-scoped fixtures, so that many read-only tests share one fill.
    """
    from conftest import _create_database, _drop_database, _with_database

    name = f"obsdb_lc_{uuid.uuid4().hex[:10]}"
    _create_database(pg_admin_url, name, template=template)
    url = _with_database(pg_admin_url, name, "postgresql+psycopg")
    try:
        yield url, fill(url, seed)
    finally:
        _drop_database(pg_admin_url, name)


def cli_env_for(url: str, home: Path) -> dict[str, str]:
    """Environment for an ``obsdb`` subprocess on the database at ``url``."""
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OBSDB_")}
    env.update(OBSDB_HOME=str(home), OBSDB_DATABASE_URL=url, PYTHONUNBUFFERED="1")
    return env


_FILLED: dict[tuple[str, str], tuple[str, Truth]] = {}


@pytest.fixture(scope="session")
def lc_database(request, pg_admin_url: str, template_database: str) -> tuple[str, Truth]:
    """One filled database for every light-curve test module of the session (they only
    read it; test_sql_access adds grants). Import it into a test module to use it.

    Each importing module holds its own copy of this fixture, so the database is cached
    here and filled once; the first copy drops it at the end of the session.
    """
    key = (pg_admin_url, template_database)
    if key not in _FILLED:
        manager = filled_database(pg_admin_url, template_database)
        _FILLED[key] = manager.__enter__()

        def drop() -> None:
            _FILLED.pop(key, None)
            manager.__exit__(None, None, None)

        request.addfinalizer(drop)
    return _FILLED[key]
