"""When frames are taken: twilight, field placement, airmass, and the night's plan.

A night runs like a small observatory's: evening twilight flats (exposure times chosen
by an automatic routine as the sky fades), a few bias frames, the lights from the end
of nautical twilight (Sun at -12 deg) to its start in the morning, each field visited
at evenly spread times while it is below ``max_airmass`` and taken through every
filter in turn, then darks and the remaining bias frames with the dome closed.

Times are MJD (UTC) floats; exposure starts are whole milliseconds so that DATE-OBS
('YYYY-MM-DDThh:mm:ss.sss') states them exactly.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import warnings
from dataclasses import dataclass

import numpy as np

from obsdb.simulate import atmosphere
from obsdb.simulate.config import SimulationConfig

_UNIX_EPOCH_MJD = 40587
_DAY_MS = 86_400_000
_SEC = 1.0 / 86400.0


def quantise_ms(mjd: float) -> float:
    """MJD rounded to a whole millisecond (what a DATE-OBS with .sss can state)."""
    return round(mjd * _DAY_MS) / _DAY_MS


def mjd_to_isot(mjd: float) -> str:
    """'YYYY-MM-DDThh:mm:ss.sss' (UTC) of an MJD, rounded to the millisecond."""
    ms = round(mjd * _DAY_MS) - _UNIX_EPOCH_MJD * _DAY_MS
    when = dt.datetime(1970, 1, 1) + dt.timedelta(milliseconds=ms)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}"


def mjd_of_datetime(when: dt.datetime) -> float:
    """MJD of a naive UTC datetime."""
    delta = when - dt.datetime(1970, 1, 1)
    return _UNIX_EPOCH_MJD + delta.total_seconds() / 86400.0


@contextlib.contextmanager
def offline_iers():
    """Astropy time/coordinate work without any download (bundled IERS tables only).

    Outside the bundled tables' range astropy degrades to approximate UT1 with a
    warning instead of failing; a simulation does not need sub-second UT1.
    """
    from astropy.utils import iers

    with iers.conf.set_temp("auto_download", False), \
            iers.conf.set_temp("iers_degraded_accuracy", "warn"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="astropy.utils.iers")
        warnings.filterwarnings("ignore", message=".*IERS.*")
        yield


def altaz(ra_deg, dec_deg, mjd, lat_deg, lon_deg, height_m):
    """Geometric altitude and azimuth (deg) of sky positions at times (astropy AltAz).

    No refraction (pressure 0): the air mass formula accounts for the curved path.
    """
    import astropy.units as u
    from astropy.coordinates import AltAz, EarthLocation, SkyCoord
    from astropy.time import Time

    with offline_iers():
        loc = EarthLocation.from_geodetic(lon_deg * u.deg, lat_deg * u.deg, height_m * u.m)
        t = Time(np.asarray(mjd, dtype=float), format="mjd", scale="utc")
        c = SkyCoord(np.asarray(ra_deg, float) * u.deg, np.asarray(dec_deg, float) * u.deg)
        aa = c.transform_to(AltAz(obstime=t, location=loc))
        return aa.alt.deg, aa.az.deg


def local_sidereal_deg(mjd, lon_deg):
    """Local mean sidereal time in degrees (IAU 1982 GMST with UT1 = UTC, ~1 s)."""
    d = np.asarray(mjd, dtype=float) - 51544.5
    return (280.46061837 + 360.98564736629 * d + lon_deg) % 360.0


def _crossing(grid, values, level, rising, after=None):
    """First time in ``grid`` (after ``after``) where ``values`` crosses ``level``.

    Linear interpolation between grid points; None if it never does.
    """
    above = values >= level
    step = above[1:] & ~above[:-1] if rising else ~above[1:] & above[:-1]
    for i in np.flatnonzero(step) + 1:
        if after is not None and grid[i] <= after:
            continue
        f = (level - values[i - 1]) / (values[i] - values[i - 1])
        return float(grid[i - 1] + f * (grid[i] - grid[i - 1]))
    return None


@dataclass(frozen=True)
class NightTimes:
    """Sun altitude through one night and its key instants (MJD).

    Attributes
    ----------
    date : str
        Local date of the evening (the night's name and raw directory).
    mjd_grid, sun_alt_grid : numpy.ndarray
        Sun altitude (deg) every 4 minutes from local noon to the next local noon.
    mjd_sunset, mjd_dark_start, mjd_dark_end, mjd_sunrise : float
        Sunset, the evening and morning Sun altitude of -12 deg (nautical twilight,
        when the lights start and end), sunrise.
    """

    date: str
    mjd_grid: np.ndarray
    sun_alt_grid: np.ndarray
    mjd_sunset: float
    mjd_dark_start: float
    mjd_dark_end: float
    mjd_sunrise: float

    @classmethod
    def compute(cls, date: str, lat_deg, lon_deg, height_m) -> NightTimes:
        """Compute the night starting on the evening of local ``date``."""
        import astropy.units as u
        from astropy.coordinates import AltAz, EarthLocation, get_sun
        from astropy.time import Time

        day = dt.date.fromisoformat(date)
        # Local mean noon in UTC: 12 h minus the longitude in hours.
        noon = dt.datetime(day.year, day.month, day.day, 12) - dt.timedelta(
            hours=lon_deg / 15.0)
        start = mjd_of_datetime(noon)
        grid = start + np.arange(0, 361) * (4.0 / 1440.0)
        with offline_iers():
            loc = EarthLocation.from_geodetic(lon_deg * u.deg, lat_deg * u.deg, height_m * u.m)
            t = Time(grid, format="mjd", scale="utc")
            alt = get_sun(t).transform_to(AltAz(obstime=t, location=loc)).alt.deg
        sunset = _crossing(grid, alt, 0.0, rising=False)
        dark_start = _crossing(grid, alt, -12.0, rising=False)
        dark_end = _crossing(grid, alt, -12.0, rising=True, after=dark_start)
        sunrise = _crossing(grid, alt, 0.0, rising=True, after=dark_end)
        if None in (sunset, dark_start, dark_end, sunrise):
            raise ValueError(
                f"the Sun does not set below -12 deg on {date} at latitude {lat_deg}; "
                "choose another start_date or site"
            )
        return cls(date, grid, alt, sunset, dark_start, dark_end, sunrise)

    def sun_alt(self, mjd):
        """Sun altitude (deg) at ``mjd`` (interpolated on the 4-minute grid)."""
        return np.interp(mjd, self.mjd_grid, self.sun_alt_grid)


@dataclass(frozen=True)
class Field:
    """A target field: name and nominal centre (deg)."""

    name: str
    ra: float
    dec: float


def place_fields(cfg: SimulationConfig, night: NightTimes) -> list[Field]:
    """Fields as configured, or placed to culminate at evenly spread dark times.

    Field i culminates at ``(i + 1) / (n + 1)`` of the first night's dark time, at
    declination latitude - 8 deg ... latitude + 4 deg, so each is observable for many
    hours from high to low altitude.
    """
    names = cfg.names_of_fields
    if cfg.field_centers is not None:
        return [Field(n, float(ra) % 360.0, float(dec))
                for n, (ra, dec) in zip(names, cfg.field_centers)]
    n = cfg.n_fields
    out = []
    for i, name in enumerate(names):
        t = night.mjd_dark_start + (i + 1) / (n + 1) * (night.mjd_dark_end - night.mjd_dark_start)
        ra = round(float(local_sidereal_deg(t, cfg.site_lon_deg)), 4)
        dec = cfg.site_lat_deg - 8.0 + (12.0 * i / (n - 1) if n > 1 else 0.0)
        out.append(Field(name, ra, round(float(np.clip(dec, -85.0, 85.0)), 4)))
    return out


def observing_window(cfg: SimulationConfig, night: NightTimes, field: Field):
    """Longest interval of the dark time with the field below ``max_airmass`` (MJD pair)."""
    grid = np.arange(night.mjd_dark_start, night.mjd_dark_end, 2.0 / 1440.0)
    grid = np.append(grid, night.mjd_dark_end)
    alt, _ = altaz(np.full(grid.size, field.ra), np.full(grid.size, field.dec), grid,
                   cfg.site_lat_deg, cfg.site_lon_deg, cfg.site_height_m)
    ok = atmosphere.airmass_from_altitude(alt) < cfg.max_airmass
    ok &= alt > 5.0
    best, run_start = None, None
    for i, good in enumerate(np.append(ok, False)):
        if good and run_start is None:
            run_start = i
        elif not good and run_start is not None:
            if best is None or i - run_start > best[1] - best[0]:
                best = (run_start, i)
            run_start = None
    if best is None or best[1] - best[0] < 2:
        raise ValueError(
            f"field {field.name} (ra {field.ra:.3f}, dec {field.dec:.3f}) never rises "
            f"below airmass {cfg.max_airmass} during the night of {night.date}"
        )
    return float(grid[best[0]]), float(grid[best[1] - 1])


@dataclass
class PlannedFrame:
    """One exposure of the plan.

    Attributes
    ----------
    kind : str
        'bias', 'dark', 'flat' or 'light'.
    exptime : float
        Seconds.
    mjd_start : float
        Exposure start, whole milliseconds.
    band, field : str or None
        Catalog band (flats, lights) and field name (lights).
    sky_adu : float
        Flats: the twilight level in ADU per pixel (before the flat field).
    visit : int
        Lights: index of the visit (a field's sequence through the filters) in the night.
    """

    kind: str
    exptime: float
    mjd_start: float
    band: str | None = None
    field: str | None = None
    sky_adu: float = 0.0
    visit: int = -1

    @property
    def mjd_end(self) -> float:
        return self.mjd_start + self.exptime * _SEC


def _twilight(cfg, band, night, mjd):
    return atmosphere.twilight_rate_adu(
        night.sun_alt(mjd), cfg.twilight_mag_at_sunset[band], cfg.twilight_slope_mag_per_deg,
        cfg.sky_mag_arcsec2[band], cfg.zero_point[band], cfg.pixel_scale_arcsec,
        cfg.extinction[band])


def _twilight_level(cfg, band, night, mjd_start, exptime):
    """Twilight counts (ADU/pixel) collected in an exposure (Simpson over its length)."""
    t = mjd_start + np.linspace(0.0, exptime, 9) * _SEC
    rate = _twilight(cfg, band, night, t)
    w = np.array([1, 4, 2, 4, 2, 4, 2, 4, 1]) / 24.0
    return float(np.sum(w * rate) * exptime)


def _time_when_rate(cfg, band, night, rate, after):
    """First time after ``after`` when the evening twilight has faded to ``rate`` ADU/s."""
    grid = np.arange(after, night.mjd_dark_start, 10.0 * _SEC)
    r = _twilight(cfg, band, night, grid)
    idx = np.flatnonzero(r <= rate)
    return float(grid[idx[0]]) if idx.size else None


def plan_flats(cfg: SimulationConfig, night: NightTimes, rng) -> list[PlannedFrame]:
    """Evening twilight flats as an automatic routine takes them.

    For each filter in turn the routine waits until the sky is faint enough for the
    shortest exposure, then chooses each exposure to reach ``flat_target_adu`` given the
    fading sky; its misjudgement (clouds, measurement noise) scatters the achieved
    level by ``flat_level_scatter``. It stops a filter early once the longest allowed
    exposure would not reach the target. With ``bad_flats`` the first flat starts far
    too early (saturated) and a last one is taken much too late (about 5000 ADU).
    """
    lo, hi = cfg.flat_exptime_range
    target = cfg.flat_target_adu
    frames: list[PlannedFrame] = []
    t = night.mjd_sunset
    for b_idx, band in enumerate(cfg.filters):
        if cfg.n_flats_per_filter == 0:
            break
        if cfg.bad_flats and b_idx == 0:
            t_bad = _time_when_rate(cfg, band, night, 3.0 * target / lo, t)
            if t_bad is not None:
                t_bad = quantise_ms(t_bad)
                frames.append(PlannedFrame("flat", lo, t_bad, band=band,
                                           sky_adu=_twilight_level(cfg, band, night, t_bad, lo)))
                t = t_bad + (lo + cfg.readout_s) * _SEC
        start = _time_when_rate(cfg, band, night, target / lo, t)
        if start is None:
            continue
        t = max(t, start)
        for _ in range(cfg.n_flats_per_filter):
            t = quantise_ms(t)
            # The exposure that would reach the target in the fading sky (two refinements).
            exptime = target / float(_twilight(cfg, band, night, t))
            for _ in range(2):
                level = _twilight_level(cfg, band, night, t, exptime)
                exptime *= target / level
            if exptime > hi:
                break
            err = float(np.clip(rng.normal(0.0, cfg.flat_level_scatter), -0.15, 0.15))
            exptime = round(min(max(exptime * (1.0 + err), lo), hi), 2)
            frames.append(PlannedFrame("flat", exptime, t, band=band,
                                       sky_adu=_twilight_level(cfg, band, night, t, exptime)))
            t += (exptime + cfg.readout_s) * _SEC
        t += cfg.filter_change_s * _SEC
    if cfg.bad_flats and frames:
        band = cfg.filters[-1]
        t_dim = _time_when_rate(cfg, band, night, 5000.0 / hi, t)
        if t_dim is not None:
            t_dim = quantise_ms(t_dim)
            frames.append(PlannedFrame("flat", hi, t_dim, band=band,
                                       sky_adu=_twilight_level(cfg, band, night, t_dim, hi)))
    return frames


def _series(kind, n, exptime, t, readout_s):
    out = []
    for _ in range(n):
        t = quantise_ms(t)
        out.append(PlannedFrame(kind, exptime, t))
        t += (exptime + readout_s + 1.0) * _SEC
    return out, t


def plan_lights(cfg, night, fields, windows, rng, not_before):
    """Light visits spread evenly over each field's window, then queued without overlap."""
    n_band = len(cfg.filters)
    visit_s = n_band * (cfg.light_exptime + cfg.readout_s) + (n_band - 1) * cfg.filter_change_s
    wanted = []
    n = cfg.lights_per_field_per_filter
    for f in fields:
        w0, w1 = windows[f.name]
        w0 = max(w0, not_before)
        # Keep the last visit clear of the airmass limit despite queueing delays.
        w1 = max(w0, w1 - visit_s * _SEC - 12.0 / 1440.0)
        times = np.linspace(w0, w1, n) if n > 1 else np.array([0.5 * (w0 + w1)])
        # A few minutes of random jitter: real visits are never on a perfect grid.
        times = np.clip(times + rng.uniform(-4.0, 4.0, times.size) / 1440.0, w0, w1)
        wanted.extend((float(t), f.name) for t in times)
    wanted.sort()
    frames: list[PlannedFrame] = []
    t_free, last_field = not_before, None
    for visit, (t_want, name) in enumerate(wanted):
        overhead = cfg.slew_s if name != last_field else cfg.filter_change_s
        t = max(t_want, t_free + overhead * _SEC)
        for i, band in enumerate(cfg.filters):
            if i:
                t += cfg.filter_change_s * _SEC
            t = quantise_ms(t)
            frames.append(PlannedFrame("light", float(cfg.light_exptime), t, band=band,
                                       field=name, visit=visit))
            t += (cfg.light_exptime + cfg.readout_s) * _SEC
        t_free, last_field = t, name
    if frames and frames[-1].mjd_end > night.mjd_dark_end + 15.0 / 1440.0:
        raise ValueError(
            f"{len(frames)} lights do not fit in the dark time of {night.date}; "
            "lower lights_per_field_per_filter or light_exptime"
        )
    return frames


def plan_night(cfg: SimulationConfig, night: NightTimes, fields: list[Field], windows,
               rng) -> list[PlannedFrame]:
    """All frames of one night in time order (see the module docstring)."""
    frames = plan_flats(cfg, night, rng)
    t = (frames[-1].mjd_end if frames else night.mjd_sunset) + 60.0 * _SEC
    n_evening = math.ceil(cfg.n_bias / 2)
    bias_eve, t = _series("bias", n_evening, 0.0, t, cfg.readout_s)
    frames += bias_eve
    lights = plan_lights(cfg, night, fields, windows, rng, max(t, night.mjd_dark_start))
    frames += lights
    t = (lights[-1].mjd_end if lights else night.mjd_dark_end) + 120.0 * _SEC
    for exptime in cfg.dark_exptimes_s:
        darks, t = _series("dark", cfg.n_darks_per_exptime, exptime, t, cfg.readout_s)
        frames += darks
    bias_morn, t = _series("bias", cfg.n_bias - n_evening, 0.0, t, cfg.readout_s)
    frames += bias_morn
    return frames
