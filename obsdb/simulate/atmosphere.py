"""The atmosphere: airmass, extinction, sky and twilight brightness, clouds, seeing.

All functions are pure; the random ones take a generator. Times are MJD (UTC) floats.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def airmass_from_altitude(alt_deg):
    """Relative air mass at an apparent altitude (Kasten & Young 1989).

    Plane-parallel sec(z) overestimates the path by ~1 % at X = 2.5 and diverges at the
    horizon; this formula stays accurate down to the horizon.
    """
    z = 90.0 - np.asarray(alt_deg, dtype=float)
    return 1.0 / (np.cos(np.radians(z)) + 0.50572 * (96.07995 - z) ** -1.6364)


def sky_rate_adu(sky_mag_arcsec2, zero_point, pixel_scale_arcsec, airmass, k, cloud_mag=0.0):
    """Night-sky background in ADU/s per pixel.

    The zenith surface brightness grows with zenith distance as the van Rhijn factor
    (a longer path through the airglow layer) dimmed by extinction along that path,
    as in Krisciunas & Schaefer (1991): ``B(X) = B_zen * X_vR * 10**(-0.4 k (X - 1))``.
    Clouds dim it like the stars (the airglow is above them; a dark site has no city
    light to reflect).
    """
    x = np.asarray(airmass, dtype=float)
    # van Rhijn with the same air mass, sin^2 z = 1 - 1/X^2 (exact for plane-parallel).
    sin2z = np.clip(1.0 - 1.0 / (x * x), 0.0, 1.0)
    van_rhijn = 1.0 / np.sqrt(1.0 - 0.96 * sin2z)
    per_arcsec2 = 10.0 ** (-0.4 * (sky_mag_arcsec2 - zero_point))
    return (per_arcsec2 * pixel_scale_arcsec**2 * van_rhijn
            * 10.0 ** (-0.4 * k * (x - 1.0)) * 10.0 ** (-0.4 * np.asarray(cloud_mag)))


def twilight_rate_adu(sun_alt_deg, mag_at_sunset, slope_mag_per_deg, sky_mag_arcsec2,
                      zero_point, pixel_scale_arcsec, k):
    """Zenith sky in ADU/s per pixel during twilight (flats point near the zenith).

    The scattered sunlight fades exponentially with solar depression (a fixed number of
    magnitudes per degree, ~1 mag/deg in the flat-field window of -2 to -8 deg) on top
    of the ordinary night sky.
    """
    depression = np.maximum(-np.asarray(sun_alt_deg, dtype=float), 0.0)
    twilight_mag = mag_at_sunset + slope_mag_per_deg * depression
    pixel_area = pixel_scale_arcsec**2
    twilight = 10.0 ** (-0.4 * (twilight_mag - zero_point)) * pixel_area * 10 ** (-0.4 * k)
    return twilight + sky_rate_adu(sky_mag_arcsec2, zero_point, pixel_scale_arcsec, 1.0, k)


@dataclass(frozen=True)
class CloudEpisode:
    """One passing cloud: grey extinction rising and falling smoothly.

    Attributes
    ----------
    mjd_centre : float
        Time of the deepest extinction.
    duration_d : float
        Full duration in days; the extinction is exactly zero outside it.
    peak_mag : float
        Extinction at the centre, magnitudes.
    """

    mjd_centre: float
    duration_d: float
    peak_mag: float

    def extinction(self, mjd):
        """Extinction (mag) of this episode at ``mjd``: a cosine-squared bump."""
        x = np.clip(np.abs(np.asarray(mjd) - self.mjd_centre) / (0.5 * self.duration_d), 0, 1)
        # Exactly zero outside the episode (cos(pi/2) is not): clear frames are clear.
        return np.where(x < 1.0, self.peak_mag * np.cos(0.5 * np.pi * x) ** 2, 0.0)


def draw_clouds(rng, mjd_start, mjd_end, n_range, peak_range, duration_min_range,
                anchor=None):
    """Cloud episodes of one night, centred uniformly in ``[mjd_start, mjd_end]``.

    If ``anchor`` (MJD) is given, the first episode is centred within 5 minutes of it.

    Returns
    -------
    list of CloudEpisode
    """
    n = int(rng.integers(n_range[0], n_range[1] + 1))
    centres = rng.uniform(mjd_start, mjd_end, n)
    if anchor is not None and n > 0:
        centres[0] = anchor + rng.uniform(-5.0, 5.0) / 1440.0
    durations = rng.uniform(*duration_min_range, n) / 1440.0
    peaks = rng.uniform(*peak_range, n)
    return [CloudEpisode(float(c), float(d), float(p))
            for c, d, p in sorted(zip(centres, durations, peaks))]


def cloud_extinction(episodes, mjd):
    """Total grey extinction (mag) of all ``episodes`` at ``mjd``; 0 in clear sky."""
    total = np.zeros(np.shape(mjd))
    for ep in episodes:
        total = total + ep.extinction(mjd)
    return total


@dataclass(frozen=True)
class SeeingModel:
    """Seeing through one night: a smooth random walk in log FWHM.

    The zenith r-band FWHM follows an Ornstein-Uhlenbeck process in log space sampled
    on a 1-minute grid (mean ``log(median)``, stationary rms ``log_sd``, correlation time
    ``timescale_h``). A frame's FWHM is that value at mid-exposure times ``X**0.6``
    (turbulence path length) times ``(lambda / lambda_r)**-0.2`` (Kolmogorov), times a
    small per-frame jitter, clipped to the allowed range.
    """

    mjd_grid: np.ndarray
    log_fwhm: np.ndarray

    @classmethod
    def draw(cls, rng, mjd_start, mjd_end, median_px, log_sd, timescale_h):
        """Draw the random walk over ``[mjd_start, mjd_end]``."""
        step_d = 1.0 / 1440.0
        grid = np.arange(mjd_start - step_d, mjd_end + 2 * step_d, step_d)
        rho = np.exp(-step_d * 24.0 / timescale_h)
        innov = rng.standard_normal(grid.size) * log_sd * np.sqrt(1.0 - rho * rho)
        x = np.empty(grid.size)
        x[0] = rng.standard_normal() * log_sd
        for i in range(1, grid.size):
            x[i] = rho * x[i - 1] + innov[i]
        return cls(grid, np.log(median_px) + x)

    def zenith_fwhm(self, mjd):
        """Zenith r-band FWHM (px) at ``mjd``."""
        return np.exp(np.interp(mjd, self.mjd_grid, self.log_fwhm))


#: Effective wavelengths (nm) for the chromatic seeing scaling.
EFFECTIVE_WAVELENGTH_NM = {"g": 477.0, "r": 623.0}


def frame_fwhm(seeing, mjd, airmass, band, jitter, fwhm_range):
    """PSF FWHM (px) of a frame: zenith seeing scaled by airmass and wavelength."""
    chrom = (EFFECTIVE_WAVELENGTH_NM[band] / EFFECTIVE_WAVELENGTH_NM["r"]) ** -0.2
    fwhm = seeing.zenith_fwhm(mjd) * np.asarray(airmass) ** 0.6 * chrom * jitter
    return np.clip(fwhm, *fwhm_range)
