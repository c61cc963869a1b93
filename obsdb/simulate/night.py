"""Orchestration: simulate one or more nights into an output directory.

Order of work: night times and fields, the stars and the reference catalog, the camera
(bias, dark current), then per night the plan, the weather, the flats, and every frame
in time order: truth record -> noise-free image -> electrons -> uint16 -> FITS.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import math
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from obsdb.simulate import (
    astrometry,
    atmosphere,
    camera,
    fitswriter,
    flatfield,
    scene,
    streams,
)
from obsdb.simulate.config import SimulationConfig
from obsdb.simulate.records import FrameRecord, write_frames_csv
from obsdb.simulate.schedule import (
    NightTimes,
    altaz,
    local_sidereal_deg,
    mjd_to_isot,
    observing_window,
    place_fields,
    plan_night,
)
from obsdb.simulate.sky import StarTable, make_stars, write_refcat
from obsdb.simulate.truth import README, NpzAppender

__all__ = ["SimulationConfig", "SimulationSummary", "simulate"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SimulationSummary:
    """What :func:`simulate` wrote.

    Attributes
    ----------
    outdir : Path
        The output directory.
    nights : tuple of str
        Night names (local evening dates), also the ``raw/`` subdirectories.
    raw_dirs : tuple of Path
        ``outdir/raw/<night>`` directories.
    n_frames : dict
        Frame counts by kind ('bias', 'dark', 'flat', 'light'), all nights together.
    n_stars : int
        Stars in the reference catalog.
    fields : tuple of str
        Field names.
    refcat : Path
        ``outdir/refcat.csv``.
    truth_dir : Path
        ``outdir/truth``.
    bytes_written : int
        Size of everything written.
    seconds : float
        Wall-clock time taken.
    """

    outdir: Path
    nights: tuple[str, ...]
    raw_dirs: tuple[Path, ...]
    n_frames: dict
    n_stars: int
    fields: tuple[str, ...]
    refcat: Path
    truth_dir: Path
    bytes_written: int
    seconds: float

    @property
    def n_total(self) -> int:
        """Number of raw frames written."""
        return sum(self.n_frames.values())


def _night_dates(cfg: SimulationConfig) -> list[str]:
    first = dt.date.fromisoformat(cfg.start_date)
    return [(first + dt.timedelta(days=i)).isoformat() for i in range(cfg.nights)]


def _check_fields_apart(cfg: SimulationConfig, fields) -> None:
    """Each field has its own star list: overlapping fields would show different skies."""
    from astropy.coordinates import SkyCoord

    reach = math.sqrt(2.0) * cfg.field_width_deg * (1.0 + 2.0 * cfg.refcat_margin)
    coords = SkyCoord([f.ra for f in fields], [f.dec for f in fields], unit="deg")
    for i in range(len(fields)):
        for j in range(i + 1, len(fields)):
            if coords[i].separation(coords[j]).deg < reach:
                raise ValueError(
                    f"fields {fields[i].name} and {fields[j].name} are closer than "
                    f"{reach:.2f} deg; their catalog regions would overlap"
                )


def _camera_json(cfg, fields, nights) -> dict:
    return {
        "description": "True camera, atmosphere and catalog constants of the simulation",
        "size": cfg.size,
        "gain_e_per_adu": cfg.gain_e_per_adu,
        "read_noise_e": cfg.read_noise_e,
        "bias_level_adu": cfg.bias_level_adu,
        "bias_column_sd_adu": cfg.bias_column_sd_adu,
        "bias_row_ramp_adu": cfg.bias_row_ramp_adu,
        "dark_current_e_per_s": cfg.dark_current_e_per_s,
        "n_hot_pixels": cfg.n_hot_pixels,
        "saturation_adu": camera.ADU_MAX,
        "full_well_e": cfg.full_well_e,
        "pixel_scale_arcsec": cfg.pixel_scale_arcsec,
        "psf_beta": cfg.psf_beta,
        "filters": list(cfg.filters),
        "filter_names": dict(cfg.filter_names),
        "zero_point_airmass0": dict(cfg.zero_point),
        "extinction": dict(cfg.extinction),
        "colour_term": dict(cfg.colour_term),
        "zero_point_definition": (
            "m_true = -2.5 log10(F_ADU / exptime) + ZP_frame + colour_term * (g - r)_true; "
            "ZP_frame = zero_point_airmass0 - extinction * airmass - cloud_extinction_mag; "
            "F_ADU is the total flux in the frame calibrated with the true bias, dark, flat"
        ),
        "catalog_offset": dict(cfg.catalog_offset),
        "sky_mag_arcsec2": dict(cfg.sky_mag_arcsec2),
        "seed": cfg.seed,
        "site": {"name": cfg.site_name, "lat_deg": cfg.site_lat_deg,
                 "lon_deg": cfg.site_lon_deg, "height_m": cfg.site_height_m},
        "fields": [{"name": f.name, "ra": f.ra, "dec": f.dec} for f in fields],
        "nights": nights,
        "config": {k: (dict(v) if isinstance(v, dict) else v)
                   for k, v in dataclasses.asdict(cfg).items()},
    }


class _NightRunner:
    """Exposes and writes every frame of one night."""

    def __init__(self, cfg, outdir, night_index, night: NightTimes, fields, stars,
                 bias, dark_rate):
        self.cfg = cfg
        self.outdir = outdir
        self.i = night_index
        self.night = night
        self.fields = {f.name: f for f in fields}
        self.stars = stars
        self.bias = bias
        self.dark_rate = dark_rate
        self.truth_dir = outdir / "truth" / night.date
        scale = cfg.pixel_scale_arcsec / 3600.0
        self.nominal = {f.name: astrometry.tan_wcs_dict(cfg.size, f.ra, f.dec, scale,
                                                        cfg.camera_rotation_deg)
                        for f in fields}

    def run(self) -> list[FrameRecord]:
        cfg, night = self.cfg, self.night
        windows = {f: observing_window(cfg, night, fld) for f, fld in self.fields.items()}
        plan = plan_night(cfg, night, list(self.fields.values()), windows,
                          streams.stream(cfg.seed, streams.SCHEDULE, self.i))
        wrng = streams.stream(cfg.seed, streams.WEATHER, self.i)
        lights = [p for p in plan if p.kind == "light"]
        t0, t1 = ((lights[0].mjd_start, lights[-1].mjd_end) if lights
                  else (night.mjd_dark_start, night.mjd_dark_end))
        # Clouds pass while the lights are taken; the first episode is centred near a
        # random light so that every night has some cloud-affected frames to find.
        anchor = float(wrng.choice([p.mjd_start for p in lights])) if lights else None
        self.clouds = atmosphere.draw_clouds(wrng, t0, t1, cfg.cloud_episodes,
                                             cfg.cloud_peak_mag, cfg.cloud_duration_min,
                                             anchor=anchor)
        self.seeing = atmosphere.SeeingModel.draw(
            wrng, night.mjd_sunset, night.mjd_sunrise, cfg.seeing_fwhm_px, cfg.seeing_log_sd,
            cfg.seeing_timescale_h)
        self.truth_dir.mkdir(parents=True, exist_ok=True)
        (self.truth_dir / "weather.json").write_text(json.dumps({
            "sunset_mjd": night.mjd_sunset, "dark_start_mjd": night.mjd_dark_start,
            "dark_end_mjd": night.mjd_dark_end, "sunrise_mjd": night.mjd_sunrise,
            "cloud_episodes": [dataclasses.asdict(c) for c in self.clouds],
            "observing_windows_mjd": windows,
        }, indent=2))
        self.flats = {}
        for band in cfg.filters:
            self.flats[band] = flatfield.true_flat(cfg, band, self.i)
            with NpzAppender(self.truth_dir / f"flat_{band}.npz") as z:
                z.add("flat", self.flats[band])
        alt_mid, alt_start = self._light_altitudes(plan)
        records = []
        counters: Counter = Counter()
        with NpzAppender(self.truth_dir / "cosmics.npz") as cosmics:
            for k, p in enumerate(plan):
                name = self._file_name(p, counters)
                rec, data, mask = self._expose(k, p, name, alt_mid.get(k), alt_start.get(k))
                if mask is not None:
                    cosmics.add(rec.name, mask)
                records.append(rec)
        return records

    def _light_altitudes(self, plan):
        """Field altitude at mid-exposure and at the start of every light (one astropy call)."""
        idx = [k for k, p in enumerate(plan) if p.kind == "light"]
        if not idx:
            return {}, {}
        ra = [self.fields[plan[k].field].ra for k in idx]
        dec = [self.fields[plan[k].field].dec for k in idx]
        t_mid = [plan[k].mjd_start + 0.5 * plan[k].exptime / 86400.0 for k in idx]
        t_start = [plan[k].mjd_start for k in idx]
        alt, _ = altaz(ra + ra, dec + dec, t_mid + t_start, self.cfg.site_lat_deg,
                       self.cfg.site_lon_deg, self.cfg.site_height_m)
        n = len(idx)
        return ({k: float(a) for k, a in zip(idx, alt[:n])},
                {k: float(a) for k, a in zip(idx, alt[n:])})

    @staticmethod
    def _file_name(p, counters) -> str:
        if p.kind == "bias":
            stem = "bias"
        elif p.kind == "dark":
            stem = f"dark-{p.exptime:g}s"
        elif p.kind == "flat":
            stem = f"flat-{p.band}"
        else:
            stem = f"{p.field}-{p.band}"
        counters[stem] += 1
        return f"{stem}-{counters[stem]:04d}.fits"

    def _expose(self, k, p, name, alt_mid, alt_start):
        cfg = self.cfg
        frng = streams.stream(cfg.seed, streams.POINTING, self.i, 100_000 + k)
        ccd_temp = camera.ccd_temperature(frng, cfg.set_temp_c, cfg.ccd_temp_jitter_c)
        mjd_mid = p.mjd_start + 0.5 * p.exptime / 86400.0
        base = dict(
            file=f"raw/{self.night.date}/{name}", night=self.night.date, index=k, kind=p.kind,
            imagetyp=fitswriter.IMAGETYP[p.kind], band=p.band or "",
            filter=cfg.filter_names[p.band] if p.band else "", field=p.field or "",
            exptime=float(p.exptime), date_obs=mjd_to_isot(p.mjd_start),
            mjd_start=float(p.mjd_start), mjd_mid=float(mjd_mid), ccd_temp=ccd_temp,
        )
        pointing = header_wcs = None
        if p.kind == "light":
            extra, header_wcs = self._light_truth(k, p, frng, mjd_mid, alt_mid, alt_start)
            base.update(extra)
            f = self.fields[p.field]
            pointing = (f.ra, f.dec)
        elif p.kind == "flat":
            # Flats point near the zenith, where the twilight sky is most uniform.
            base.update(sky_adu_per_pix=float(p.sky_adu), airmass_header=1.0)
            pointing = (float(local_sidereal_deg(p.mjd_start, cfg.site_lon_deg)),
                        cfg.site_lat_deg)
        rec = FrameRecord(**base)

        shape = (cfg.size, cfg.size)
        expected = self.dark_rate * p.exptime if p.exptime > 0 else np.zeros(shape)
        if p.kind in ("flat", "light"):
            signal = scene.noise_free_image(rec, self.stars, cfg.size)
            expected = expected + signal * self.flats[p.band] * cfg.gain_e_per_adu
        mask = None
        cr_idx = cr_e = None
        n_cr = 0
        if p.exptime > 0:
            cr_idx, cr_e, n_cr = camera.cosmic_rays(
                streams.stream(cfg.seed, streams.COSMICS, self.i, k), shape, p.exptime,
                cfg.cosmic_rate_per_cm2_s, cfg.detector_area_cm2)
            mask = np.zeros(shape, dtype=bool)
            mask.flat[cr_idx] = True
        data = camera.read_out(streams.stream(cfg.seed, streams.PIXELS, self.i, k), expected,
                               self.bias, cfg.gain_e_per_adu, cfg.read_noise_e,
                               cfg.full_well_e, cr_idx, cr_e)
        rec = dataclasses.replace(rec, n_cosmics=int(n_cr),
                                  n_cosmic_pixels=int(0 if cr_idx is None else cr_idx.size),
                                  n_saturated_pixels=int(np.count_nonzero(data == camera.ADU_MAX)))
        header = fitswriter.frame_header(cfg, rec, pointing=pointing, header_wcs=header_wcs)
        fitswriter.write_frame(self.outdir / rec.file, data, header)
        return rec, data, mask

    def _light_truth(self, k, p, frng, mjd_mid, alt_mid, alt_start):
        """Air mass, weather, PSF, sky, zero point and WCS of one light."""
        cfg = self.cfg
        band = p.band
        airmass = float(atmosphere.airmass_from_altitude(alt_mid))
        cloud = float(atmosphere.cloud_extinction(self.clouds, mjd_mid))
        jitter = 1.0 + frng.normal(0.0, cfg.seeing_frame_jitter)
        fwhm = float(atmosphere.frame_fwhm(self.seeing, mjd_mid, airmass, band, jitter,
                                           (cfg.fwhm_min_px, cfg.fwhm_max_px)))
        k_ext = cfg.extinction[band]
        sky = float(atmosphere.sky_rate_adu(cfg.sky_mag_arcsec2[band], cfg.zero_point[band],
                                            cfg.pixel_scale_arcsec, airmass, k_ext, cloud)
                    * p.exptime)
        zp = cfg.zero_point[band] - k_ext * airmass - cloud
        # Where the mount truly points: a new error every visit, a small drift per frame.
        vrng = streams.stream(cfg.seed, streams.POINTING, self.i, p.visit)
        dx, dy = vrng.normal(0.0, cfg.pointing_jitter_px, 2) + frng.normal(0.0, 0.3, 2)
        true_wcs = astrometry.shifted_wcs(self.nominal[p.field], float(dx), float(dy), 0.0)
        # The header's plate solution is off by a random shift and rotation.
        r = frng.uniform(*cfg.wcs_error_px)
        phi = frng.uniform(0.0, 2.0 * math.pi)
        ex, ey = r * math.cos(phi), r * math.sin(phi)
        rot = frng.uniform(-cfg.wcs_rotation_error_deg, cfg.wcs_rotation_error_deg)
        header_wcs = astrometry.shifted_wcs(true_wcs, ex, ey, rot)
        extra = dict(
            airmass=airmass, airmass_header=float(atmosphere.airmass_from_altitude(alt_start)),
            alt_deg=float(alt_mid), cloud_extinction_mag=cloud, seeing_fwhm_px=fwhm,
            psf_beta=float(cfg.psf_beta), sky_adu_per_pix=sky, true_zero_point=float(zp),
            colour_term=float(cfg.colour_term[band]), extinction_coeff=float(k_ext),
            pointing_dx_px=float(dx), pointing_dy_px=float(dy), wcs_error_dx_px=float(ex),
            wcs_error_dy_px=float(ey), wcs_error_rot_deg=float(rot),
            true_wcs=json.dumps(true_wcs),
        )
        return extra, header_wcs


def simulate(outdir, config: SimulationConfig | None = None) -> SimulationSummary:
    """Simulate ``config.nights`` nights of raw frames with their truth into ``outdir``.

    Parameters
    ----------
    outdir : path-like
        Output directory; created if missing. Its ``raw/`` must not already hold files.
    config : SimulationConfig, optional
        All settings; the defaults give one 1024x1024 night with 2 fields in g and r.

    Returns
    -------
    SimulationSummary

    Raises
    ------
    FileExistsError
        If ``outdir/raw`` already holds files (a second run would mix two skies).
    ValueError
        If the configuration cannot be observed (see the message).
    """
    t0 = time.perf_counter()
    cfg = config or SimulationConfig()
    outdir = Path(outdir)
    raw = outdir / "raw"
    if raw.exists() and any(raw.iterdir()):
        raise FileExistsError(f"{raw} already holds files; simulate into an empty directory")
    dates = _night_dates(cfg)
    nights = [NightTimes.compute(d, cfg.site_lat_deg, cfg.site_lon_deg, cfg.site_height_m)
              for d in dates]
    fields = place_fields(cfg, nights[0])
    _check_fields_apart(cfg, fields)
    windows0 = {f.name: observing_window(cfg, nights[0], f) for f in fields}
    mjd_ref = 0.5 * (nights[0].mjd_dark_start + nights[0].mjd_dark_end)
    stars = make_stars(cfg, fields, windows0, mjd_ref)

    tdir = outdir / "truth"
    tdir.mkdir(parents=True, exist_ok=True)
    stars.write_csv(tdir / "stars.csv")
    # Simulate from what was written, so the truth reproduces the pixels exactly.
    stars = StarTable.read_csv(tdir / "stars.csv")
    write_refcat(cfg, stars, outdir / "refcat.csv")
    (tdir / "camera.json").write_text(json.dumps(_camera_json(cfg, fields, dates), indent=2))
    (tdir / "README.txt").write_text(README)

    shape = (cfg.size, cfg.size)
    bias = camera.bias_structure(streams.stream(cfg.seed, streams.CAMERA, 0), shape,
                                 cfg.bias_level_adu, cfg.bias_column_sd_adu,
                                 cfg.bias_row_ramp_adu)
    dark_rate = camera.dark_rate_map(streams.stream(cfg.seed, streams.CAMERA, 1), shape,
                                     cfg.dark_current_e_per_s, cfg.dark_nonuniformity,
                                     cfg.n_hot_pixels, cfg.hot_pixel_factor)
    with NpzAppender(tdir / "bias.npz") as z:
        z.add("bias", bias)
    with NpzAppender(tdir / "dark_rate.npz") as z:
        z.add("dark_rate", dark_rate)
    bias64 = bias.astype(float)
    dark64 = dark_rate.astype(float)

    records: list[FrameRecord] = []
    for i, night in enumerate(nights):
        runner = _NightRunner(cfg, outdir, i, night, fields, stars, bias64, dark64)
        records += runner.run()
        log.info("night %s: %d frames", night.date, len(records))
    write_frames_csv(tdir / "frames.csv", records)

    written = sum(p.stat().st_size for p in outdir.rglob("*") if p.is_file())
    return SimulationSummary(
        outdir=outdir,
        nights=tuple(dates),
        raw_dirs=tuple(raw / d for d in dates),
        n_frames=dict(Counter(r.kind for r in records)),
        n_stars=len(stars),
        fields=tuple(f.name for f in fields),
        refcat=outdir / "refcat.csv",
        truth_dir=tdir,
        bytes_written=written,
        seconds=time.perf_counter() - t0,
    )

