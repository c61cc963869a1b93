"""Every knob of the night simulator, in one frozen dataclass.

The defaults describe one plausible small observatory: a 0.36 m f/4 telescope with a
1024x1024 CCD of 9 um pixels (1.33 arcsec/pixel, a 22.6 arcmin field), MaxIm DL writing
the files, at a moderately dark site. Change any of them with ``dataclasses.replace``.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

#: The catalog bands the simulator knows; the reference catalog carries exactly these.
BANDS = ("g", "r")

#: Variable-star classes placed in every field, in this order.
VARIABLE_TYPES = ("pulsator", "eclipsing", "transit", "trend")


def _per_band(g: float, r: float):
    return field(default_factory=lambda: {"g": g, "r": r})


@dataclass(frozen=True)
class SimulationConfig:
    """Configuration of a simulated observing run.

    Attributes are grouped as the physics is: run, site, telescope and camera, flat
    field, photometric system, atmosphere, sky scene, schedule, pointing, cosmic rays.
    Per-filter values are mappings keyed by catalog band (``"g"``, ``"r"``).

    Attributes
    ----------
    seed : int
        Seed of every random stream; the same seed gives byte-identical pixel data.
    nights : int
        Number of consecutive nights (same camera and fields, new weather, dust moved).
    start_date : str
        Local calendar date (``YYYY-MM-DD``) of the first evening. The raw directory of
        a night is named after this date, as :func:`obsdb.nights.observing_night` names it.
    size : int
        Side of the square frames in (binned) pixels. With the default variables
        (two of each kind, isolated, away from the edges) frames need at least 256
        pixels; smaller frames need ``variables_per_type=1`` or 0.
    site_name : str
        Observatory name (only for the truth files).
    site_lat_deg, site_lon_deg, site_height_m : float
        Geodetic site; longitude east-positive (MaxIm/ASCOM convention).
    telescope, instrument, software, observer : str
        TELESCOP, INSTRUME, SWCREATE and OBSERVER header values.
    aperture_mm, focal_length_mm : float
        APTDIA and FOCALLEN; with the pixel size they fix the pixel scale.
    pixel_size_um : float
        Unbinned pixel size (XPIXSZ/YPIXSZ are written after binning).
    binning : int
        XBINNING = YBINNING. Only the header and pixel scale change with it.
    gain_e_per_adu : float
        True gain, written as EGAIN.
    read_noise_e : float
        True read noise; MaxIm does not write it, so it is only in the truth.
    bias_level_adu : float
        Mean bias level.
    bias_column_sd_adu : float
        Rms of the fixed column pattern of the bias.
    bias_row_ramp_adu : float
        Bias change from the first to the last row (amplifier settling during readout).
    dark_current_e_per_s : float
        Mean dark current per pixel at the set temperature.
    dark_nonuniformity : float
        Fractional pixel-to-pixel rms of the dark current (log-normal).
    hot_pixel_fraction : float
        Fraction of pixels that are hot (0.0003 gives about 300 in a 1024 frame).
    hot_pixel_factor : tuple of float
        Hot pixels run this many times the mean dark current (log-uniform range).
    full_well_e : float
        Electrons at which a pixel saturates; a saturated pixel reads 65535 ADU.
    set_temp_c : float
        SET-TEMP; CCD-TEMP scatters around it by ``ccd_temp_jitter_c``.
    ccd_temp_jitter_c : float
        Rms of the CCD-TEMP reading around the set point (dark current unaffected).
    vignetting_corner : float
        Fractional light loss in the frame corners relative to the optical centre.
    n_dust_donuts : int
        Dust shadows (rings) per filter, in addition to ``n_window_donuts`` shared ones.
    n_window_donuts : int
        Dust shadows on the camera window, seen through every filter.
    dust_depth : tuple of float
        Range of the fractional dip of a dust donut.
    dust_radius_px : tuple of float
        Range of the outer radius of a donut, in pixels.
    dust_drift_px_per_night : float
        Rms shift of each donut from one night to the next (dust moves a bit).
    pixel_flat_rms : float
        Pixel-to-pixel sensitivity rms of the flat.
    filters : tuple of str
        Filters used, as catalog bands (a subset of ``("g", "r")``). Lights alternate
        through them in this order within each visit.
    filter_names : mapping
        FILTER header value per band, as the filter wheel spells it (``"g'"``).
    zero_point : mapping
        Magnitude of a star of colour g-r = 0 giving 1 ADU/s above the atmosphere.
    extinction : mapping
        First-order extinction coefficient k (mag per airmass).
    colour_term : mapping
        C in ``m_true = -2.5 log10(F/t) + ZP_frame + C (g - r)``; C = -0.08 in g means
        the instrumental g is g + 0.08 (g - r).
    sky_mag_arcsec2 : mapping
        Dark-sky surface brightness at the zenith.
    twilight_mag_at_sunset : mapping
        Zenith twilight sky surface brightness with the Sun at the horizon.
    twilight_slope_mag_per_deg : float
        Twilight sky fades this many magnitudes per degree of solar depression.
    seeing_fwhm_px : float
        Median PSF FWHM at the zenith in r, in pixels.
    seeing_log_sd : float
        Stationary rms of the natural log of the seeing (a smooth random walk).
    seeing_timescale_h : float
        Correlation time of the seeing random walk.
    seeing_frame_jitter : float
        Fractional frame-to-frame FWHM scatter on top of the random walk.
    fwhm_min_px, fwhm_max_px : float
        FWHM is clipped to this range.
    psf_beta : float
        Moffat beta of the PSF.
    cloud_episodes : tuple of int
        Inclusive range of the number of cloud episodes per night.
    cloud_peak_mag : tuple of float
        Range of the peak grey extinction of one episode.
    cloud_duration_min : tuple of float
        Range of the full duration of one episode (smooth rise and fall).
    n_fields : int
        Number of target fields.
    field_names : tuple of str or None
        Field names (OBJECT and file prefix); default ``FIELD1``, ``FIELD2``...
    field_centers : tuple of (ra, dec) in degrees, or None
        Field centres; by default they are placed to culminate during the first night.
        Fields must not overlap (each has its own stars).
    stars_per_deg2 : float
        Density of catalog stars between ``mag_range`` limits.
    mag_range : tuple of float
        g range of the field stars.
    lf_slope : float
        Luminosity function slope: dN/dm proportional to 10**(lf_slope * m).
    colour_mean, colour_sd : float
        Normal distribution of g - r, clipped to ``colour_range``.
    colour_range : tuple of float
        Allowed g - r.
    refcat_margin : float
        The catalog covers the frame plus this fraction of its width on every side.
    n_bright_per_field : int
        Extra bright stars per field in ``bright_mag_range`` (they saturate).
    bright_mag_range : tuple of float
        g range of the extra bright stars.
    variables_per_type : int
        Number of each of pulsator, eclipsing, transit, trend in every field.
    variable_mag_range : tuple of float
        g range of the variables; each is made fainter if it could saturate.
    variable_isolation_px : float
        No other star lies this close to a variable.
    catalog_offset : mapping
        Systematic offset added to every catalog magnitude of a band.
    catalog_err_floor : float
        Quoted catalog error of bright stars.
    catalog_err_at_faint : float
        Extra quoted error at ``mag_range[1]`` (grows exponentially towards it).
    catalog_err_scale_mag : float
        E-folding of the catalog error growth, in magnitudes.
    light_exptime : float
        Exposure time of every light, seconds.
    lights_per_field_per_filter : int
        Lights of each field in each filter per night.
    max_airmass : float
        A field is observed only below this airmass.
    n_bias : int
        Bias frames per night (about half in the evening, the rest in the morning).
    dark_exptimes : tuple of float or None
        Dark exposure times; by default the light exposure and 300 s (or twice it).
    n_darks_per_exptime : int
        Darks per exposure time, taken in the morning with the dome closed.
    n_flats_per_filter : int
        Evening twilight flats per filter.
    flat_target_adu : float
        Level the automatic flat routine aims for.
    flat_exptime_range : tuple of float
        Shortest and longest exposure the flat routine will use.
    flat_level_scatter : float
        Fractional rms of the achieved flat level around the target (clipped at 2.5
        sigma, so with the defaults every flat is between 20k and 35k ADU).
    bad_flats : bool
        If true, the first flat of the night is saturated (started too early) and the
        last one is underexposed (about 5000 ADU), as careless automation produces.
    readout_s, filter_change_s, slew_s : float
        Overheads between frames.
    camera_rotation_deg : float
        True position angle of the detector columns east of north.
    pointing_jitter_px : float
        Rms offset of the true pointing from the field centre, new on every visit.
    wcs_error_px : tuple of float
        Range of the header WCS offset from the true WCS (a stale plate solution).
    wcs_rotation_error_deg : float
        Largest header WCS rotation error (uniform in +-).
    cosmic_rate_per_cm2_s : float
        Cosmic-ray events per cm^2 of detector per second of exposure.
    """

    # -- run
    seed: int = 1
    nights: int = 1
    start_date: str = "2025-10-14"
    size: int = 1024
    # -- site
    site_name: str = "obsdb simulated observatory"
    site_lat_deg: float = 32.0
    site_lon_deg: float = -110.9
    site_height_m: float = 800.0
    # -- telescope and camera
    telescope: str = "Sim 14in f/4 astrograph"
    instrument: str = "SimCam KAF-1001E"
    software: str = "MaxIm DL Version 6.40"
    observer: str = "obsdb simulator"
    aperture_mm: float = 356.0
    focal_length_mm: float = 1400.0
    pixel_size_um: float = 9.0
    binning: int = 1
    gain_e_per_adu: float = 1.5
    read_noise_e: float = 10.0
    bias_level_adu: float = 1000.0
    bias_column_sd_adu: float = 2.0
    bias_row_ramp_adu: float = 3.0
    dark_current_e_per_s: float = 0.02
    dark_nonuniformity: float = 0.1
    hot_pixel_fraction: float = 3e-4
    hot_pixel_factor: tuple[float, float] = (10.0, 1000.0)
    full_well_e: float = 95000.0
    set_temp_c: float = -20.0
    ccd_temp_jitter_c: float = 0.1
    # -- flat field
    vignetting_corner: float = 0.15
    n_dust_donuts: int = 2
    n_window_donuts: int = 2
    dust_depth: tuple[float, float] = (0.01, 0.03)
    dust_radius_px: tuple[float, float] = (8.0, 30.0)
    dust_drift_px_per_night: float = 3.0
    pixel_flat_rms: float = 0.01
    # -- photometric system
    filters: tuple[str, ...] = ("g", "r")
    filter_names: Mapping[str, str] = field(default_factory=lambda: {"g": "g'", "r": "r'"})
    zero_point: Mapping[str, float] = _per_band(21.4, 21.3)
    extinction: Mapping[str, float] = _per_band(0.20, 0.12)
    colour_term: Mapping[str, float] = _per_band(-0.08, 0.04)
    sky_mag_arcsec2: Mapping[str, float] = _per_band(21.3, 20.6)
    twilight_mag_at_sunset: Mapping[str, float] = _per_band(7.5, 7.6)
    twilight_slope_mag_per_deg: float = 1.0
    # -- atmosphere
    seeing_fwhm_px: float = 2.6
    seeing_log_sd: float = 0.15
    seeing_timescale_h: float = 1.0
    seeing_frame_jitter: float = 0.03
    fwhm_min_px: float = 2.0
    fwhm_max_px: float = 4.5
    psf_beta: float = 3.0
    cloud_episodes: tuple[int, int] = (1, 3)
    cloud_peak_mag: tuple[float, float] = (0.05, 1.0)
    cloud_duration_min: tuple[float, float] = (20.0, 70.0)
    # -- sky scene
    n_fields: int = 2
    field_names: tuple[str, ...] | None = None
    field_centers: tuple[tuple[float, float], ...] | None = None
    stars_per_deg2: float = 3500.0
    mag_range: tuple[float, float] = (9.0, 20.0)
    lf_slope: float = 0.3
    colour_mean: float = 0.6
    colour_sd: float = 0.35
    colour_range: tuple[float, float] = (-0.2, 1.5)
    refcat_margin: float = 0.15
    n_bright_per_field: int = 3
    bright_mag_range: tuple[float, float] = (8.5, 10.5)
    variables_per_type: int = 2
    variable_mag_range: tuple[float, float] = (13.0, 15.0)
    variable_isolation_px: float = 18.0
    catalog_offset: Mapping[str, float] = _per_band(0.0, 0.0)
    catalog_err_floor: float = 0.003
    catalog_err_at_faint: float = 0.1
    catalog_err_scale_mag: float = 1.1
    # -- schedule
    light_exptime: float = 120.0
    lights_per_field_per_filter: int = 16
    max_airmass: float = 2.5
    n_bias: int = 11
    dark_exptimes: tuple[float, ...] | None = None
    n_darks_per_exptime: int = 5
    n_flats_per_filter: int = 7
    flat_target_adu: float = 27000.0
    flat_exptime_range: tuple[float, float] = (3.0, 30.0)
    flat_level_scatter: float = 0.06
    bad_flats: bool = False
    readout_s: float = 4.0
    filter_change_s: float = 5.0
    slew_s: float = 45.0
    # -- pointing
    camera_rotation_deg: float = 0.4
    pointing_jitter_px: float = 8.0
    wcs_error_px: tuple[float, float] = (3.0, 20.0)
    wcs_rotation_error_deg: float = 0.3
    # -- cosmic rays
    cosmic_rate_per_cm2_s: float = 0.03

    def __post_init__(self) -> None:
        # Input checks live here so that a bad CLI option fails before any file is written.
        if self.nights < 1:
            raise ValueError(f"nights must be at least 1, got {self.nights}")
        if not 32 <= self.size <= 8192:
            raise ValueError(f"size must be between 32 and 8192 pixels, got {self.size}")
        try:
            _dt.date.fromisoformat(self.start_date)
        except ValueError:
            raise ValueError(
                f"start_date must be YYYY-MM-DD, got {self.start_date!r}"
            ) from None
        if not self.filters or any(b not in BANDS for b in self.filters):
            raise ValueError(
                f"filters must be a non-empty subset of {BANDS}, got {self.filters!r}"
            )
        if len(set(self.filters)) != len(self.filters):
            raise ValueError(f"filters must not repeat, got {self.filters!r}")
        for name in (
            "filter_names", "zero_point", "extinction", "colour_term",
            "sky_mag_arcsec2", "twilight_mag_at_sunset",
        ):
            missing = [b for b in self.filters if b not in getattr(self, name)]
            if missing:
                raise ValueError(f"{name} has no value for filter(s) {missing}")
        for b in BANDS:
            if b not in self.catalog_offset:
                raise ValueError(f"catalog_offset has no value for band {b!r}")
        if self.n_fields < 1:
            raise ValueError(f"n_fields must be at least 1, got {self.n_fields}")
        if self.field_names is not None:
            if len(self.field_names) != self.n_fields:
                raise ValueError("field_names must have n_fields entries")
            bad = [n for n in self.field_names if not n or "-" in n or "/" in n or " " in n]
            if bad:
                raise ValueError(
                    f"field names must be non-empty without '-', '/' or spaces: {bad}"
                )
        if self.field_centers is not None and len(self.field_centers) != self.n_fields:
            raise ValueError("field_centers must have n_fields (ra, dec) pairs")
        if self.light_exptime <= 0:
            raise ValueError(f"light_exptime must be positive, got {self.light_exptime}")
        for name in ("lights_per_field_per_filter", "n_bias", "n_darks_per_exptime",
                     "n_flats_per_filter", "variables_per_type", "n_bright_per_field"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.gain_e_per_adu <= 0 or self.read_noise_e <= 0:
            raise ValueError("gain_e_per_adu and read_noise_e must be positive")
        if not self.fwhm_min_px <= self.seeing_fwhm_px <= self.fwhm_max_px:
            raise ValueError("seeing_fwhm_px must lie between fwhm_min_px and fwhm_max_px")
        if self.psf_beta <= 1.0:
            raise ValueError(f"psf_beta must exceed 1 (finite flux), got {self.psf_beta}")
        if self.max_airmass <= 1.0:
            raise ValueError(f"max_airmass must exceed 1, got {self.max_airmass}")
        lo, hi = self.flat_exptime_range
        if not 0 < lo < hi:
            raise ValueError("flat_exptime_range must be (shortest, longest) with 0 < shortest")

    # -- derived quantities -------------------------------------------------------------

    @property
    def pixel_scale_arcsec(self) -> float:
        """Binned pixel scale in arcsec/pixel (small-angle: 206265 * pixel / focal length)."""
        return 206264.806 * self.pixel_size_um * self.binning * 1e-3 / self.focal_length_mm

    @property
    def field_width_deg(self) -> float:
        """Side of a frame on the sky, degrees."""
        return self.size * self.pixel_scale_arcsec / 3600.0

    @property
    def names_of_fields(self) -> tuple[str, ...]:
        """Field names, defaulted to FIELD1, FIELD2, ..."""
        if self.field_names is not None:
            return tuple(self.field_names)
        return tuple(f"FIELD{i + 1}" for i in range(self.n_fields))

    @property
    def dark_exptimes_s(self) -> tuple[float, ...]:
        """Dark exposure times: the light exposure and a longer one unless configured."""
        if self.dark_exptimes is not None:
            return tuple(float(t) for t in self.dark_exptimes)
        longer = 300.0 if self.light_exptime < 300.0 else 2.0 * self.light_exptime
        return (float(self.light_exptime), longer)

    @property
    def n_hot_pixels(self) -> int:
        """Number of hot pixels in a frame of ``size``."""
        return int(round(self.hot_pixel_fraction * self.size * self.size))

    @property
    def detector_area_cm2(self) -> float:
        """Illuminated detector area (cosmic rays hit per unit area)."""
        side_cm = self.size * self.binning * self.pixel_size_um * 1e-4
        return side_cm * side_cm

    @property
    def moffat_alpha_min(self) -> float:
        """Moffat core width of the sharpest allowed PSF."""
        return self.fwhm_min_px / (2.0 * math.sqrt(2.0 ** (1.0 / self.psf_beta) - 1.0))
