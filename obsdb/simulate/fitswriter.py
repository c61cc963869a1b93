"""Raw FITS files as MaxIm DL writes them.

uint16 pixels are stored as BITPIX = 16 with BZERO = 32768 (astropy does this for
uint16 data), one primary HDU, plain ``.fits``. Keywords and comments follow MaxIm DL
(SBFITSEXT): DATE-OBS is the UTC exposure start, AIRMASS is computed at the exposure
start, there is no SATURATE and no read noise keyword; a plate-solved light carries a
TAN WCS (CD matrix) with the solver's error.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from astropy.io import fits

from obsdb.simulate import astrometry
from obsdb.simulate.config import SimulationConfig
from obsdb.simulate.records import FrameRecord

IMAGETYP = {
    "bias": "Bias Frame",
    "dark": "Dark Frame",
    "flat": "Flat Field",
    "light": "Light Frame",
}


def frame_header(cfg: SimulationConfig, rec: FrameRecord, *, pointing=None,
                 header_wcs=None) -> fits.Header:
    """Header of one raw frame.

    Parameters
    ----------
    cfg : SimulationConfig
        Camera, telescope and site.
    rec : FrameRecord
        The frame's truth record (times, type, filter, temperature, air mass).
    pointing : tuple of float, optional
        (ra, dec) in degrees the mount reports (lights: the nominal field centre;
        flats: near the zenith). Omitted for bias and darks (telescope parked).
    header_wcs : dict, optional
        WCS keywords of the (erroneous) plate solution, lights only.
    """
    h = fits.Header()
    h["DATE-OBS"] = (rec.date_obs, "YYYY-MM-DDThh:mm:ss observation start, UT")
    h["EXPTIME"] = (float(rec.exptime), "Exposure time in seconds")
    h["EXPOSURE"] = (float(rec.exptime), "Exposure time in seconds")
    h["SET-TEMP"] = (float(cfg.set_temp_c), "CCD temperature setpoint in C")
    h["CCD-TEMP"] = (round(rec.ccd_temp, 4), "CCD temperature at start of exposure in C")
    pix = float(cfg.pixel_size_um * cfg.binning)
    h["XPIXSZ"] = (pix, "Pixel Width in microns (after binning)")
    h["YPIXSZ"] = (pix, "Pixel Height in microns (after binning)")
    h["XBINNING"] = (int(cfg.binning), "Binning factor in width")
    h["YBINNING"] = (int(cfg.binning), "Binning factor in height")
    h["XORGSUBF"] = (0, "Subframe X position in binned pixels")
    h["YORGSUBF"] = (0, "Subframe Y position in binned pixels")
    h["READOUTM"] = ("Normal", "Readout mode of image")
    if rec.filter:
        h["FILTER"] = (rec.filter, "Filter used when taking image")
    h["IMAGETYP"] = (rec.imagetyp, "Type of image")
    if pointing is not None:
        ra, dec = pointing
        h["OBJCTRA"] = (astrometry.format_ra(ra), "Nominal Right Ascension of center of image")
        h["OBJCTDEC"] = (astrometry.format_dec(dec), "Nominal Declination of center of image")
        h["RA"] = (round(float(ra), 6), "Nominal Right Ascension of center, degrees")
        h["DEC"] = (round(float(dec), 6), "Nominal Declination of center, degrees")
    if not math.isnan(rec.airmass_header):
        h["AIRMASS"] = (round(rec.airmass_header, 6),
                        "Relative optical path length through atmosphere")
    h["JD"] = (rec.mjd_start + 2400000.5, "Julian Date at start of exposure")
    h["FOCALLEN"] = (float(cfg.focal_length_mm), "Focal length of telescope in mm")
    h["APTDIA"] = (float(cfg.aperture_mm), "Aperture diameter of telescope in mm")
    h["APTAREA"] = (round(math.pi * (cfg.aperture_mm / 2) ** 2 * 0.85, 3),
                    "Aperture area of telescope in mm^2")
    h["EGAIN"] = (float(cfg.gain_e_per_adu), "Electronic gain in e-/ADU")
    h["SWCREATE"] = (cfg.software, "Name of software that created the image")
    h["SBSTDVER"] = ("SBFITSEXT Version 1.0", "Version of SBFITSEXT standard in effect")
    if rec.kind == "light":
        h["OBJECT"] = rec.field
    h["TELESCOP"] = (cfg.telescope, "telescope used to acquire this image")
    h["INSTRUME"] = cfg.instrument
    h["OBSERVER"] = cfg.observer
    h["SITELAT"] = (astrometry.format_dec(cfg.site_lat_deg), "Latitude of the imaging location")
    h["SITELONG"] = (astrometry.format_lon(cfg.site_lon_deg),
                     "Longitude of the imaging location")
    if header_wcs is not None:
        h["EQUINOX"] = (2000.0, "Equatorial equinox")
        h["RADESYS"] = ("ICRS", "Reference frame of the WCS")
        h["CTYPE1"] = (header_wcs["CTYPE1"], "Coordinate type")
        h["CTYPE2"] = (header_wcs["CTYPE2"], "Coordinate type")
        for key in ("CRVAL1", "CRVAL2", "CRPIX1", "CRPIX2", "CD1_1", "CD1_2", "CD2_1", "CD2_2"):
            h[key] = float(header_wcs[key])
        h["PLTSOLVD"] = (True, "Plate has been solved")
    return h


def write_frame(path: Path, data: np.ndarray, header: fits.Header) -> int:
    """Write one raw frame; returns its size in bytes.

    The file is written under a temporary name and renamed, so that a watcher never
    sees a half-written frame under its final name.
    """
    if data.dtype != np.uint16:
        raise ValueError(f"raw frames are uint16, got {data.dtype}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    fits.PrimaryHDU(data=data, header=header).writeto(tmp, overwrite=True)
    tmp.replace(path)
    return path.stat().st_size


def header_wcs_json(header: fits.Header) -> str:
    """The WCS keywords of a header as JSON (for tests and debugging)."""
    return json.dumps({k: header[k] for k in astrometry.WCS_KEYS if k in header})
