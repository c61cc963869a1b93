"""The per-frame truth record: one row of ``truth/frames.csv``.

Floats are written with ``repr`` so that a record read back is bit-identical to the one
the pixels were made from: :meth:`obsdb.simulate.truth.Truth.noise_free_image` then
rebuilds exactly the image the simulator exposed.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

NAN = float("nan")


@dataclass(frozen=True)
class FrameRecord:
    """What is true about one raw frame.

    Attributes
    ----------
    file : str
        Path relative to the output directory (``raw/2025-10-14/FIELD1-g-0001.fits``).
    night : str
        The night (local date of the evening).
    index : int
        Position of the frame in the night (its random streams are keyed by it).
    kind : str
        'bias', 'dark', 'flat' or 'light'.
    imagetyp : str
        IMAGETYP as written ('Bias Frame', 'Dark Frame', 'Flat Field', 'Light Frame').
    band : str
        Catalog band ('g', 'r') of flats and lights, '' otherwise.
    filter : str
        FILTER as written ("g'"), '' for bias and darks.
    field : str
        Field name of lights, '' otherwise.
    exptime : float
        Seconds.
    date_obs : str
        DATE-OBS: exposure start, UTC, millisecond precision.
    mjd_start, mjd_mid : float
        Exposure start and middle (MJD UTC).
    airmass : float
        Lights: air mass of the field centre at mid-exposure (Kasten & Young). NaN else.
    airmass_header : float
        The AIRMASS keyword: air mass at exposure *start*, as MaxIm computes it.
    alt_deg : float
        Lights: altitude of the field centre at mid-exposure.
    cloud_extinction_mag : float
        Lights: grey cloud extinction at mid-exposure (0 in clear sky).
    seeing_fwhm_px : float
        Lights: Moffat FWHM of the PSF.
    psf_beta : float
        Lights: Moffat beta.
    sky_adu_per_pix : float
        Sky (lights) or twilight (flats) counts per pixel in ADU, before the flat field
        (a calibrated frame shows this level). 0 for bias and darks.
    true_zero_point : float
        Lights: ZP such that ``m_true = -2.5 log10(F / exptime) + ZP + colour_term *
        (g - r)_true``, with F the star's total flux in ADU in the calibrated frame
        (bias and dark subtracted, divided by the true flat) and the magnitudes the
        star's true ones at mid-exposure. ``ZP = zero_point[band] - k X - clouds``.
    colour_term, extinction_coeff : float
        C and k of the band.
    ccd_temp : float
        CCD-TEMP as written.
    pointing_dx_px, pointing_dy_px : float
        Lights: where the frame centre truly points, in pixels of the nominal field
        WCS relative to its centre (mount pointing error).
    wcs_error_dx_px, wcs_error_dy_px, wcs_error_rot_deg : float
        Lights: error of the header WCS. Header pixel p sees what the true WCS puts at
        ``c + (dx, dy) + R(rot) (p - c)``, c the reference pixel (frame centre).
    true_wcs : str
        Lights: JSON dict of the true TAN WCS keywords ('' otherwise).
    n_cosmics : int
        Cosmic-ray events.
    n_cosmic_pixels : int
        Pixels hit by cosmic rays (the mask in ``cosmics.npz``).
    n_saturated_pixels : int
        Pixels at 65535 ADU.
    """

    file: str
    night: str
    index: int
    kind: str
    imagetyp: str
    band: str
    filter: str
    field: str
    exptime: float
    date_obs: str
    mjd_start: float
    mjd_mid: float
    airmass: float = NAN
    airmass_header: float = NAN
    alt_deg: float = NAN
    cloud_extinction_mag: float = NAN
    seeing_fwhm_px: float = NAN
    psf_beta: float = NAN
    sky_adu_per_pix: float = 0.0
    true_zero_point: float = NAN
    colour_term: float = NAN
    extinction_coeff: float = NAN
    ccd_temp: float = NAN
    pointing_dx_px: float = NAN
    pointing_dy_px: float = NAN
    wcs_error_dx_px: float = NAN
    wcs_error_dy_px: float = NAN
    wcs_error_rot_deg: float = NAN
    true_wcs: str = ""
    n_cosmics: int = 0
    n_cosmic_pixels: int = 0
    n_saturated_pixels: int = 0

    @property
    def name(self) -> str:
        """File name without directory or extension (``FIELD1-g-0001``)."""
        return Path(self.file).stem

    @property
    def wcs_dict(self) -> dict:
        """The true WCS keywords as a dict (empty for frames without one)."""
        return json.loads(self.true_wcs) if self.true_wcs else {}

    def to_row(self) -> list:
        out = []
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out.append(repr(float(v)) if f.type == "float" else v)
        return out

    @classmethod
    def from_row(cls, row: dict) -> FrameRecord:
        kw = {}
        for f in dataclasses.fields(cls):
            raw = row[f.name]
            kw[f.name] = float(raw) if f.type == "float" else int(raw) if f.type == "int" else raw
        return cls(**kw)


def write_frames_csv(path: Path, records) -> None:
    """Write ``truth/frames.csv``."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([f.name for f in dataclasses.fields(FrameRecord)])
        for r in records:
            w.writerow(r.to_row())


def read_frames_csv(path: Path) -> list[FrameRecord]:
    """Read ``truth/frames.csv``."""
    with open(path, newline="") as fh:
        return [FrameRecord.from_row(r) for r in csv.DictReader(fh)]
