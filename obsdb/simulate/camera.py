"""The CCD camera: bias, dark current, hot pixels, cosmic rays, noise and readout.

Readout model of one pixel (electrons ``e``, ADU ``a``)::

    e_mean = gain * flat * S + dark_rate * t      # S: noise-free sky + stars, ADU
    e      = Poisson(e_mean) + cosmic_e
    a      = rint(bias + e / gain + Normal(0, read_noise / gain)), clipped to 0..65535
    a      = 65535 wherever e >= full_well      # the pixel is saturated

so a calibrated pixel ``(a - bias - dark_rate t / gain) / flat`` has mean ``S`` and
variance ``(e_mean / gain**2 + (read_noise / gain)**2 + 1/12) / flat**2`` (the last
term is quantisation).
"""

from __future__ import annotations

import numpy as np

ADU_MAX = 65535


def bias_structure(rng, shape, level_adu, column_sd_adu, row_ramp_adu):
    """True 2-D bias (ADU): level, a fixed column pattern, and a row ramp.

    The column pattern is fixed in the silicon (it is the same in every frame, so a
    master bias removes it); the ramp is the output amplifier settling while the rows
    are read, smallest in the first row read (row 0).
    """
    ny, nx = shape
    columns = rng.normal(0.0, column_sd_adu, nx)
    ramp = row_ramp_adu * np.linspace(0.0, 1.0, ny)
    return (level_adu + ramp[:, None] + columns[None, :]).astype(np.float32)


def dark_rate_map(rng, shape, mean_e_per_s, nonuniformity, n_hot, hot_factor):
    """True dark current per pixel (e-/s) with hot pixels.

    Ordinary pixels scatter log-normally by ``nonuniformity`` around the mean; ``n_hot``
    pixels run ``hot_factor[0]``..``hot_factor[1]`` times the mean (log-uniform), as
    lattice defects do.
    """
    sigma = np.sqrt(np.log1p(nonuniformity**2))
    rate = mean_e_per_s * rng.lognormal(-0.5 * sigma**2, sigma, shape)
    flat_idx = rng.choice(rate.size, size=n_hot, replace=False)
    factor = 10.0 ** rng.uniform(np.log10(hot_factor[0]), np.log10(hot_factor[1]), n_hot)
    rate.flat[flat_idx] = mean_e_per_s * factor
    return rate.astype(np.float32)


def cosmic_rays(rng, shape, exptime, rate_per_cm2_s, area_cm2):
    """Cosmic-ray hits of one exposure.

    The number of events is Poisson(rate * area * t). Each event is a straight track
    from a random point, in a random direction, 0 to ~10 px long (exponential, mean
    2.5 px: most muons cross the thin depletion layer nearly head-on), depositing a
    log-normal 400-20000 e- in every pixel it crosses.

    Returns
    -------
    index : numpy.ndarray
        Flat pixel indices hit (unique).
    electrons : numpy.ndarray
        Electrons deposited in each.
    n_events : int
        Number of cosmic-ray events.
    """
    ny, nx = shape
    n = int(rng.poisson(rate_per_cm2_s * area_cm2 * max(exptime, 0.0)))
    deposit = np.zeros(ny * nx)
    for _ in range(n):
        x0, y0 = rng.uniform(0, nx), rng.uniform(0, ny)
        length = min(rng.exponential(2.5), 10.0)
        angle = rng.uniform(0.0, np.pi)
        t = np.linspace(0.0, length, max(2, int(np.ceil(length * 4)) + 1))
        xs = np.floor(x0 + t * np.cos(angle)).astype(np.int64)
        ys = np.floor(y0 + t * np.sin(angle)).astype(np.int64)
        ok = (xs >= 0) & (xs < nx) & (ys >= 0) & (ys < ny)
        pix = np.unique(ys[ok] * nx + xs[ok])
        e = np.clip(rng.lognormal(np.log(2000.0), 0.6, pix.size), 400.0, 20000.0)
        deposit[pix] += e
    index = np.flatnonzero(deposit)
    return index, deposit[index], n


def read_out(rng, expected_e, bias_adu, gain, read_noise_e, full_well_e,
             cosmic_index=None, cosmic_e=None):
    """Electrons to the uint16 image the camera writes (see the module docstring).

    Parameters
    ----------
    rng : numpy.random.Generator
        Stream for the photon and read noise of this frame.
    expected_e : numpy.ndarray
        Mean electrons per pixel (signal times flat times gain, plus dark current).
    bias_adu : numpy.ndarray
        True bias (ADU).
    gain, read_noise_e, full_well_e : float
        Camera constants (e-/ADU, e-, e-).
    cosmic_index, cosmic_e : numpy.ndarray, optional
        Cosmic-ray hits from :func:`cosmic_rays`.

    Returns
    -------
    numpy.ndarray
        uint16 image.
    """
    electrons = rng.poisson(expected_e).astype(np.float64)
    if cosmic_index is not None and cosmic_index.size:
        electrons.flat[cosmic_index] += cosmic_e
    saturated = electrons >= full_well_e
    adu = electrons / gain
    adu += bias_adu
    adu += rng.standard_normal(adu.shape) * (read_noise_e / gain)
    np.rint(adu, out=adu)
    np.clip(adu, 0, ADU_MAX, out=adu)
    adu[saturated] = ADU_MAX
    return adu.astype(np.uint16)


def ccd_temperature(rng, set_temp_c, jitter_c):
    """CCD-TEMP reading: the regulated temperature scatters slightly around the set point."""
    return float(set_temp_c + rng.normal(0.0, jitter_c))
