"""Instrument profiles: headers of real and common software into FrameInfo; configuration."""

from __future__ import annotations

import dataclasses
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import FK5, ICRS, EarthLocation, SkyCoord
from astropy.io import fits
from astropy.time import Time

from obsdb.fitsfile import read_header
from obsdb.instruments import (
    GENERIC_PROFILE,
    FrameInfo,
    InstrumentProfile,
    ProfileError,
    load_profiles,
    select_profile,
)

NGC520 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ngc520-umd-g"
NOW = datetime(2025, 1, 1, tzinfo=UTC)


def frame_header(tmp_path: Path, cards: dict, *, dtype=np.uint16, shape=(40, 60), name="f.fits") -> fits.Header:
    """Write a small real FITS file with ``cards`` and read its header back."""
    hdr = fits.Header()
    for key, value in cards.items():
        hdr[key] = value
    path = tmp_path / name
    fits.PrimaryHDU(np.zeros(shape, dtype), hdr).writeto(path, overwrite=True)
    return read_header(path).header


def read(tmp_path: Path, cards: dict, profile: InstrumentProfile = GENERIC_PROFILE, **kw) -> FrameInfo:
    return profile.read(frame_header(tmp_path, cards, **kw), "f.fits", now=NOW)


# -- the real night ---------------------------------------------------------------------


@pytest.mark.skipif(not NGC520.is_dir(), reason=f"real data not found at {NGC520}")
def test_real_ngc520_night():
    infos = {}
    for path in sorted(NGC520.glob("*.fit.gz")):
        got = read_header(path)
        profile = select_profile(got.header, load_profiles({}))
        infos[path.name] = (profile.read(got.header, path.name, now=NOW), got.header)
    assert len(infos) == 28
    assert Counter(i.imagetyp for i, _ in infos.values()) == {"bias": 7, "dark": 7, "flat": 7, "light": 7}
    for name, (info, header) in infos.items():
        assert info.profile == "generic"
        assert info.warnings == (), (name, info.warnings)
        assert info.date_obs == datetime.fromisoformat(header["DATE-OBS"]).replace(tzinfo=UTC), name
        assert info.time_source == "DATE-OBS; agrees with JD"
        assert (info.xbinning, info.ybinning, info.naxis1, info.naxis2) == (1, 1, 1530, 1020)
        assert info.gain == pytest.approx(2.6)
        assert info.ccd_temp == pytest.approx(-10, abs=0.5)
        assert info.source("ccd_temp") == "CCD-TEMP"
        assert info.saturation == 65535.0
        assert info.instrument == "SBIG ST-8 3 CCD Camera"
        assert info.object is None and info.telescope is None
        assert info.has_wcs is False and info.pixel_scale is None  # FOCALLEN = 0
        assert info.mjd_mid == pytest.approx(info.mjd_start + info.exptime / 2 / 86400)
        kind = info.imagetyp
        assert info.imagetyp_source == {"bias": "IMAGETYP='Bias Frame'", "dark": "IMAGETYP='Dark Frame'",
                                        "flat": "IMAGETYP='Flat Field'", "light": "IMAGETYP='Light Frame'"}[kind]
        assert info.exptime == {"bias": 0.0, "dark": 300.0, "flat": 10.0, "light": 300.0}[kind]
        if kind in ("flat", "light"):
            assert info.filter == "Sloan g'"
        else:
            assert info.filter is None
    light = infos["NGC520-001-g.fit.gz"][0]
    assert light.date_obs == datetime(2018, 10, 14, 3, 7, 2, tzinfo=UTC)
    assert light.ra == pytest.approx(15 * (1 + 24 / 60 + 17 / 3600))  # '01 24 17' hours
    assert light.ra == pytest.approx(21.07, abs=0.01) and light.dec == pytest.approx(3.78, abs=0.01)
    assert light.source("ra") == "OBJCTRA/OBJCTDEC"
    assert infos["calib-001-bi.fit.gz"][0].ra is None  # MaxIm wrote no pointing for biases


# -- binning ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cards, expected, source",
    [
        ({"XBINNING": 2, "YBINNING": 2}, (2, 2), "XBINNING/YBINNING"),
        ({"XBINNING": 1, "YBINNING": 3}, (1, 3), "XBINNING/YBINNING"),
        ({"XBINNING": 2}, (2, 2), "XBINNING"),
        ({"CCDSUM": "2 2"}, (2, 2), "CCDSUM"),
        ({"CCDSUM": "1 2"}, (1, 2), "CCDSUM"),
        ({"BINNING": "2x2"}, (2, 2), "BINNING"),
        ({"BINNING": "3"}, (3, 3), "BINNING"),
        ({"BINNING": 4}, (4, 4), "BINNING"),
        ({"XBIN": 2, "YBIN": 2}, (2, 2), "XBIN/YBIN"),
        ({}, (1, 1), None),
    ],
)
def test_binning(tmp_path, cards, expected, source):
    info = read(tmp_path, cards)
    assert (info.xbinning, info.ybinning) == expected
    assert info.source("binning") == source
    assert info.binning == f"{expected[0]}x{expected[1]}"
    assert info.warnings == () or all("time" in w for w in info.warnings)


# -- CCD temperature --------------------------------------------------------------------


@pytest.mark.parametrize(
    "cards, expected, source",
    [
        ({"CCD-TEMP": -10.2}, -10.2, "CCD-TEMP"),
        ({"CCD_TEMP": -20.0}, -20.0, "CCD_TEMP"),
        ({"CCDTEMP": -5.0}, -5.0, "CCDTEMP"),
        ({"TEMPERAT": -15.0}, -15.0, "TEMPERAT"),
        ({"CAMTEMP": 263.15}, -10.0, "CAMTEMP (kelvin)"),
        ({"DET-TEMP": 173.15}, -100.0, "DET-TEMP (kelvin)"),
        ({"CAMTEMP": -25.0}, -25.0, "CAMTEMP"),
        ({"SET-TEMP": -10.0}, -10.0, "SET-TEMP (set point; no measured temperature)"),
        ({"CCD-TEMP": -9.8, "SET-TEMP": -10.0}, -9.8, "CCD-TEMP"),
    ],
)
def test_ccd_temperature(tmp_path, cards, expected, source):
    info = read(tmp_path, cards)
    assert info.ccd_temp == pytest.approx(expected)
    assert info.source("ccd_temp") == source


def test_ccd_temp_kelvin_switch(tmp_path):
    header = frame_header(tmp_path, {"CCD-TEMP": 25.0})
    assert GENERIC_PROFILE.read(header).ccd_temp == 25.0  # auto: 25 is below the kelvin threshold
    forced = InstrumentProfile.from_dict("k", {"ccd_temp_kelvin": True})
    header["CCD-TEMP"] = 248.15
    assert forced.read(header).ccd_temp == pytest.approx(-25.0)
    never = InstrumentProfile.from_dict("c", {"ccd_temp_kelvin": False})
    info = never.read(header)
    assert info.ccd_temp is None and any("not a plausible CCD temperature" in w for w in info.warnings)


# -- pointing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cards, ra, dec, source",
    [
        ({"RA": 21.0708, "DEC": 3.7797}, 21.0708, 3.7797, "RA/DEC"),  # NINA/ACP degrees
        ({"RA": "01:24:17.0", "DEC": "+03:46:47"}, 21.070833, 3.779722, "RA/DEC"),  # LCO: hours
        ({"RA": "01 24 17", "DEC": "-03 46 47"}, 21.070833, -3.779722, "RA/DEC"),
        ({"RA": "21.0708", "DEC": "3.7797"}, 21.0708, 3.7797, "RA/DEC"),  # numeric strings: degrees
        ({"OBJCTRA": "01 24 17", "OBJCTDEC": "+03 46 47"}, 21.070833, 3.779722, "OBJCTRA/OBJCTDEC"),
        ({"OBJCTRA": "1h24m17s", "OBJCTDEC": "3d46m47s"}, 21.070833, 3.779722, "OBJCTRA/OBJCTDEC"),
        ({"TELRA": "23:59:59.9", "TELDEC": "-00:30:00"}, 359.999583, -0.5, "TELRA/TELDEC"),
        ({"CAT-RA": "12:00:00", "CAT-DEC": "+45:00:00"}, 180.0, 45.0, "CAT-RA/CAT-DEC"),
        ({"RA": 10.0, "DEC": 95.0, "OBJCTRA": "01 00 00", "OBJCTDEC": "+10 00 00"}, 15.0, 10.0,
         "OBJCTRA/OBJCTDEC"),  # an impossible pair is skipped (with a warning)
    ],
)
def test_pointing(tmp_path, cards, ra, dec, source):
    info = read(tmp_path, cards)
    assert info.ra == pytest.approx(ra, abs=1e-5) and info.dec == pytest.approx(dec, abs=1e-5)
    assert info.source("ra") == source


def test_pointing_from_wcs_as_last_resort(tmp_path):
    info = read(tmp_path, {**_TAN_WCS})
    assert info.has_wcs and info.ra == pytest.approx(150.1) and info.dec == pytest.approx(2.2)
    assert info.source("ra") == "CRVAL1/CRVAL2"


def test_pointing_of_another_equinox_is_precessed_to_icrs(tmp_path):
    info = read(tmp_path, {"OBJCTRA": "01 25 20", "OBJCTDEC": "+03 53 00", "EQUINOX": 2018.8})
    expected = SkyCoord("01h25m20s", "+03d53m00s", frame=FK5(equinox=Time(2018.8, format="jyear"))).transform_to(ICRS())
    assert info.ra == pytest.approx(expected.ra.deg, abs=1e-6)
    assert info.dec == pytest.approx(expected.dec.deg, abs=1e-6)
    assert abs(info.ra - 21.3333) > 0.1  # 19 years of precession is not negligible
    assert "precessed to ICRS" in info.source("ra")
    j2000 = read(tmp_path, {"OBJCTRA": "01 25 20", "OBJCTDEC": "+03 53 00", "EQUINOX": 2000.0})
    assert j2000.ra == pytest.approx(21.33333, abs=1e-5)


# -- gain, read noise, saturation -------------------------------------------------------


def test_detector_keywords(tmp_path):
    info = read(tmp_path, {"EGAIN": 1.5, "GAIN": 120, "RDNOISE": 7.5, "SATURATE": 60000.0})
    assert (info.gain, info.read_noise, info.saturation) == (1.5, 7.5, 60000.0)
    assert info.source("gain") == "EGAIN"
    lco = read(tmp_path, {"GAIN": 1.1, "READNOIS": 9.0, "SATLEVEL": 50000})
    assert (lco.gain, lco.read_noise, lco.saturation) == (1.1, 9.0, 50000.0)
    assert read(tmp_path, {"RON": 4.0}).read_noise == 4.0


def test_gain_setting_is_not_a_gain(tmp_path):
    info = read(tmp_path, {"GAIN": 120})  # a CMOS gain setting, not e-/ADU
    assert info.gain is None and any("GAIN=120 is not a plausible gain" in w for w in info.warnings)


def test_profile_fills_what_the_header_lacks(tmp_path):
    profile = InstrumentProfile.from_dict("cam", {"gain": 2.0, "read_noise": 11.0, "saturation": 40000})
    bare = read(tmp_path, {}, profile)
    assert (bare.gain, bare.read_noise, bare.saturation) == (2.0, 11.0, 40000.0)
    assert bare.source("gain") == "profile cam"
    written = read(tmp_path, {"EGAIN": 1.3, "RDNOISE": 8.0, "SATURATE": 50000}, profile)
    assert (written.gain, written.read_noise, written.saturation) == (1.3, 8.0, 50000.0)


@pytest.mark.parametrize(
    "dtype, extra, expected",
    [
        (np.uint16, {}, 65535.0),
        (np.int16, {}, 32767.0),
        (np.uint8, {}, 255.0),
        (np.float32, {}, None),
        (np.uint16, {"DATAMAX": 62000.0}, 62000.0),  # a plausible detector limit
        (np.uint16, {"DATAMAX": 812.0}, 65535.0),  # the brightest pixel of a bias, not a limit
    ],
)
def test_saturation_defaults(tmp_path, dtype, extra, expected):
    info = read(tmp_path, extra, dtype=dtype)
    assert info.saturation == expected


def test_default_saturation_can_be_switched_off(tmp_path):
    profile = InstrumentProfile.from_dict("nosat", {"default_saturation": False})
    assert read(tmp_path, {}, profile).saturation is None
    fixed = InstrumentProfile.from_dict("fixed", {"default_saturation": 50000})
    assert read(tmp_path, {}, fixed, dtype=np.float32).saturation == 50000.0


# -- site -------------------------------------------------------------------------------


def test_site_maxim_sexagesimal(tmp_path):
    info = read(tmp_path, {"SITELAT": "+39 00 00", "SITELONG": "-76 56 00", "SITEELEV": 50.0})
    assert info.site_lat == pytest.approx(39.0)
    assert info.site_lon == pytest.approx(-76.933333)  # east-positive: 76 deg 56' west
    assert info.site_height == 50.0


def test_site_lco_degrees(tmp_path):
    info = read(tmp_path, {"LATITUDE": 20.7069, "LONGITUD": -156.2575, "HEIGHT": 3055.0, "ALTITUDE": 63.2})
    assert (info.site_lat, info.site_lon, info.site_height) == (20.7069, -156.2575, 3055.0)
    assert info.source("site_height") == "HEIGHT"  # ALTITUDE is the telescope's elevation angle


def test_site_obsgeo_geodetic(tmp_path):
    info = read(tmp_path, {"OBSGEO-B": -30.1652, "OBSGEO-L": -70.8150, "OBSGEO-H": 2215.0})
    assert (info.site_lat, info.site_lon, info.site_height) == (-30.1652, -70.8150, 2215.0)


def test_site_obsgeo_geocentric(tmp_path):
    loc = EarthLocation.from_geodetic(lon=-76.9333 * u.deg, lat=39.0 * u.deg, height=50 * u.m)
    cards = {"OBSGEO-X": loc.x.to_value(u.m), "OBSGEO-Y": loc.y.to_value(u.m), "OBSGEO-Z": loc.z.to_value(u.m)}
    info = read(tmp_path, cards)
    assert info.site_lat == pytest.approx(39.0, abs=1e-6)
    assert info.site_lon == pytest.approx(-76.9333, abs=1e-6)
    assert info.site_height == pytest.approx(50.0, abs=1e-3)
    assert info.source("site_lat") == "OBSGEO-X/Y/Z"


def test_site_west_positive_software(tmp_path):
    profile = InstrumentProfile.from_dict("old", {"longitude_west_positive": True})
    info = read(tmp_path, {"SITELAT": "+39 00 00", "SITELONG": "76 56 00"}, profile)
    assert info.site_lon == pytest.approx(-76.9333, abs=1e-4)


def test_site_from_profile(tmp_path):
    profile = InstrumentProfile.from_dict("obs", {"site": {"lat": 39.0, "lon": 283.0667, "height": 50}})
    info = read(tmp_path, {}, profile)
    assert (info.site_lat, info.site_height) == (39.0, 50.0)
    assert info.site_lon == pytest.approx(-76.9333)
    assert info.source("site_lat") == "profile obs"


# -- filter -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cards, expected",
    [
        ({"FILTER": "Sloan g'"}, "Sloan g'"),
        ({"FILTER": "  V  "}, "V"),
        ({"FILTER": "   "}, None),
        ({"FILTER": "Clear"}, "Clear"),  # on its own, a clear filter is a real setup
        ({"FILTNAME": "R"}, "R"),
        ({"INSFILTE": "B"}, "B"),
        ({"FILTER1": "air", "FILTER2": "rp", "FILTER3": "air"}, "rp"),
        ({"FILTER1": "clear", "FILTER2": "Ha", "FILTER3": "ND"}, "Ha+ND"),
        ({"FILTER1": "air", "FILTER2": "air"}, "air"),
        ({"FILTER": "rp", "FILTER1": "air", "FILTER2": "gp"}, "rp"),
        ({}, None),
    ],
)
def test_filter(tmp_path, cards, expected):
    assert read(tmp_path, cards).filter == expected


def test_filter_aliases(tmp_path):
    profile = InstrumentProfile.from_dict("cam", {"filters": {"Sloan g'": "g'", "sdss r": "r'"}})
    assert read(tmp_path, {"FILTER": "Sloan g'"}, profile).filter == "g'"
    info = read(tmp_path, {"FILTER": "SDSS R"}, profile)  # case-insensitive
    assert info.filter == "r'" and "via the profile's filters" in info.source("filter")
    assert read(tmp_path, {"FILTER": "V"}, profile).filter == "V"


# -- sections, WCS, pixel scale ---------------------------------------------------------


def test_sections_from_header_and_profile(tmp_path):
    info = read(tmp_path, {"BIASSEC": "[51:60,1:40]", "TRIMSEC": "[1:50, 1:40]"})
    assert (info.overscan, info.trim) == ("[51:60,1:40]", "[1:50,1:40]")
    assert read(tmp_path, {"DATASEC": "[2:49,2:39]"}).trim == "[2:49,2:39]"
    profile = InstrumentProfile.from_dict("cam", {"overscan": "[55:60,1:40]", "trim": "[1:54,1:40]"})
    assert (read(tmp_path, {}, profile).overscan, read(tmp_path, {}, profile).trim) == ("[55:60,1:40]", "[1:54,1:40]")
    ignoring = InstrumentProfile.from_dict("ign", {"overscan": "[55:60,1:40]", "keywords": {"overscan": []}})
    assert read(tmp_path, {"BIASSEC": "[51:60,1:40]"}, ignoring).overscan == "[55:60,1:40]"


@pytest.mark.parametrize("value, why", [("51:60,1:40", "not a FITS section"), ("[51:80,1:40]", "outside")])
def test_bad_sections_warn(tmp_path, value, why):
    info = read(tmp_path, {"BIASSEC": value})
    assert info.overscan is None and any(why in w for w in info.warnings)


_TAN_WCS = {
    "CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": 150.1, "CRVAL2": 2.2, "CRPIX1": 30.0, "CRPIX2": 20.0,
    "CD1_1": -1.5e-4, "CD1_2": 0.0, "CD2_1": 0.0, "CD2_2": 1.5e-4,
}


def test_wcs_cd_matrix(tmp_path):
    info = read(tmp_path, dict(_TAN_WCS))
    assert info.has_wcs and info.pixel_scale == pytest.approx(0.54)
    assert info.source("pixel_scale") == "WCS CD matrix"


def test_wcs_cdelt(tmp_path):
    cards = {k: v for k, v in _TAN_WCS.items() if not k.startswith("CD")}
    cards.update(CDELT1=-2.5e-4, CDELT2=2.5e-4)
    info = read(tmp_path, cards)
    assert info.has_wcs and info.pixel_scale == pytest.approx(0.9)


@pytest.mark.parametrize("drop", ["CTYPE1", "CRPIX2", "CRVAL1", "CD"])
def test_incomplete_wcs(tmp_path, drop):
    cards = {k: v for k, v in _TAN_WCS.items() if not k.startswith(drop)}
    assert read(tmp_path, cards).has_wcs is False


def test_non_celestial_wcs(tmp_path):
    assert read(tmp_path, {**_TAN_WCS, "CTYPE1": "LINEAR", "CTYPE2": "LINEAR"}).has_wcs is False


def test_pixel_scale_from_optics(tmp_path):
    info = read(tmp_path, {"XPIXSZ": 9.0, "FOCALLEN": 2000.0, "XBINNING": 2})
    assert info.pixel_scale == pytest.approx(206.265 * 9.0 / 2000.0)  # XPIXSZ is after binning (SBFITSEXT)
    unbinned = InstrumentProfile.from_dict("cam", {"pixel_size_binned": False})
    assert read(tmp_path, {"XPIXSZ": 9.0, "FOCALLEN": 2000.0, "XBINNING": 2}, unbinned).pixel_scale == pytest.approx(
        2 * 206.265 * 9.0 / 2000.0)
    assert read(tmp_path, {"XPIXSZ": 9.0, "FOCALLEN": 0.0}).pixel_scale is None


# -- absurd values: None and a warning, never an exception ------------------------------


@pytest.mark.parametrize(
    "cards, field, expected, warning",
    [
        ({"EXPTIME": -5.0}, "exptime", None, "EXPTIME=-5.0 is negative"),
        ({"EXPTIME": "abc"}, "exptime", None, "EXPTIME='abc' is not a number"),
        ({"EXPTIME": 1e7}, "exptime", None, "longer than a day"),
        ({"DATE-OBS": "1900-01-01T00:00:00"}, "date_obs", None, "before 1950"),
        ({"XBINNING": 0, "YBINNING": 0}, "xbinning", 1, "XBINNING=0 is not a binning factor"),
        ({"XBINNING": "two"}, "xbinning", 1, "is not a binning factor"),
        ({"CCDSUM": "a b"}, "ybinning", 1, "is not a binning"),
        ({"AIRMASS": 0.5}, "airmass", None, "not a plausible airmass"),
        ({"EGAIN": -1.0}, "gain", None, "not a plausible gain"),
        ({"RDNOISE": "n/a"}, "read_noise", None, "not a number"),
        ({"SATURATE": -1}, "saturation", 65535.0, "not a plausible saturation"),
        ({"CCD-TEMP": 500.0}, "ccd_temp", None, "not a plausible CCD temperature"),
        ({"CCD-TEMP": "cold"}, "ccd_temp", None, "not a number"),
        ({"RA": "25:00:00", "DEC": "+10:00:00"}, "ra", None, "is not a sky position"),
        ({"RA": 10.0, "DEC": -91.0}, "dec", None, "is not a sky position"),
        ({"SITELAT": 123.0}, "site_lat", None, "not a plausible site lat"),
        ({"SITEELEV": 1e6}, "site_height", None, "not a plausible site height"),
        ({"EQUINOX": "B1950?", "RA": 10.0, "DEC": 10.0}, "ra", 10.0, "not an equinox"),
    ],
)
def test_absurd_values(tmp_path, cards, field, expected, warning):
    info = read(tmp_path, cards)
    assert getattr(info, field) == expected
    assert any(warning in w for w in info.warnings), info.warnings


def test_unparsable_cards_never_raise(tmp_path):
    path = tmp_path / "broken.fits"
    fits.PrimaryHDU(np.zeros((4, 6), np.uint16), fits.Header([("IMAGETYP", "Light Frame")])).writeto(path)
    raw = bytearray(path.read_bytes())
    end = raw.find(b"END" + b" " * 77)
    bad_cards = [b"EXPTIME = 12 34 xyz / not a value", b"DATE-OBS= '2018-10-14T03:07:02",
                 b"FILTER  = 'V' 'R'", b"RA      = ++12:00", b"XBINNING= 2.5.5"]
    for i, card in enumerate(bad_cards):
        raw[end + 80 * i : end + 80 * (i + 1)] = card.ljust(80)
    raw[end + 80 * len(bad_cards) : end + 80 * (len(bad_cards) + 1)] = b"END".ljust(80)
    path.write_bytes(bytes(raw))
    info = GENERIC_PROFILE.read(read_header(path).header, "broken.fits", now=NOW)
    assert info.imagetyp == "light" and info.exptime is None and info.xbinning == 1
    assert any("EXPTIME: unreadable card" in w for w in info.warnings)


def test_empty_header_gives_a_frame_info():
    info = GENERIC_PROFILE.read(fits.Header(), None)
    assert info.imagetyp == "unclassified" and info.date_obs is None and info.naxis1 is None
    assert (info.xbinning, info.ybinning) == (1, 1)


def test_frame_info_is_frozen_hashable_and_pure(tmp_path):
    header = frame_header(tmp_path, {"IMAGETYP": "Light Frame", "EXPTIME": 30.0, "DATE-OBS": "2020-01-01T00:00:00",
                                     "FILTER": "V", "OBJCTRA": "01 00 00", "OBJCTDEC": "+10 00 00"})
    before = header.tostring()
    a = GENERIC_PROFILE.read(header, "f.fits", now=NOW)
    b = GENERIC_PROFILE.read(header, "f.fits", now=NOW)
    assert a == b and hash(a) == hash(b)
    assert header.tostring() == before  # the header is not touched
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.exptime = 1.0  # type: ignore[misc]
    for name in ("imagetyp", "imagetyp_source", "object", "filter", "exptime", "xbinning", "ybinning", "gain",
                 "read_noise", "saturation", "ccd_temp", "ra", "dec", "date_obs", "mjd_start", "mjd_mid",
                 "time_source", "airmass", "telescope", "instrument", "site_lat", "site_lon", "site_height",
                 "naxis1", "naxis2", "overscan", "trim", "has_wcs", "pixel_scale", "warnings"):
        assert hasattr(a, name), name


# -- software-specific headers ------------------------------------------------------------


def test_lco_banzai_header(tmp_path):
    cards = {
        "OBSTYPE": "EXPOSE", "OBJECT": "NGC 520", "EXPTIME": 120.0, "FILTER": "gp", "FILTER1": "air",
        "FILTER2": "gp", "CCDSUM": "2 2", "GAIN": 1.0, "RDNOISE": 7.0, "SATURATE": 47500.0, "CCDATEMP": -100.0,
        "DATE-OBS": "2020-10-14T03:07:02.123", "MJD-OBS": 59136.12988568, "RA": "01:24:34.9", "DEC": "+03:47:30",
        "CAT-RA": "01:24:35.1", "CAT-DEC": "+03:47:33", "AIRMASS": 1.21, "TELESCOP": "1m0-05", "INSTRUME": "fa14",
        "LATITUDE": -30.1673, "LONGITUD": -70.8047, "HEIGHT": 2198.0, "TIMESYS": "UTC",
    }
    info = read(tmp_path, cards)
    assert (info.imagetyp, info.filter, info.binning, info.gain, info.read_noise, info.saturation) == (
        "light", "gp", "2x2", 1.0, 7.0, 47500.0)
    assert info.ra == pytest.approx(21.14542, abs=1e-4) and info.source("ra") == "RA/DEC"
    assert info.date_obs == datetime(2020, 10, 14, 3, 7, 2, 123000, tzinfo=UTC)
    assert info.time_source == "DATE-OBS; agrees with MJD-OBS"  # 1 ms against 0.86 ms: a tie
    assert (info.airmass, info.telescope, info.instrument) == (1.21, "1m0-05", "fa14")
    assert info.warnings == ()


def test_nina_header(tmp_path):
    cards = {
        "IMAGETYP": "LIGHT", "EXPOSURE": 60.0, "XBINNING": 1, "YBINNING": 1, "GAIN": 120, "EGAIN": 0.25,
        "XPIXSZ": 3.76, "FOCALLEN": 530.0, "CCD-TEMP": -10.0, "SET-TEMP": -10.0, "FILTER": "L",
        "OBJECT": "M 31", "RA": 10.6847, "DEC": 41.2690, "DATE-OBS": "2023-09-01T22:01:02.345",
        "DATE-LOC": "2023-09-02T00:01:02.345", "SITELAT": 47.5, "SITELONG": 8.2, "SITEELEV": 400.0,
        "TELESCOP": "RedCat 71", "INSTRUME": "ZWO ASI2600MM Pro",
    }
    info = read(tmp_path, cards)
    assert (info.imagetyp, info.exptime, info.gain, info.filter) == ("light", 60.0, 0.25, "L")
    assert info.pixel_scale == pytest.approx(206.265 * 3.76 / 530)
    assert info.date_obs == datetime(2023, 9, 1, 22, 1, 2, 345000, tzinfo=UTC)
    assert (info.site_lat, info.site_lon, info.site_height) == (47.5, 8.2, 400.0)


# -- configuration ------------------------------------------------------------------------


def test_from_dict_full():
    profile = InstrumentProfile.from_dict("st8", {
        "match": {"INSTRUME": "ST-8", "TELESCOP": "^14"}, "gain": 2.6, "read_noise": 15, "saturation": 60000,
        "overscan": "[1:10,1:1020]", "trim": "[11:1530,1:1020]", "site": {"lat": 39.0, "lon": -76.93, "height": 50},
        "time_keywords": ["DATE-OBS"], "utc_offset_hours": -5, "ccd_temp_kelvin": "auto",
        "longitude_west_positive": False, "pixel_size_binned": True, "frame_types": {"Light": "light"},
        "filters": {"Sloan g'": "g'"}, "keywords": {"exptime": ["EXPOSURE"], "object": "TARGET"},
        "default_saturation": "auto", "description": "the 14-inch",
    })
    assert profile.match == (("INSTRUME", "ST-8"), ("TELESCOP", "^14"))
    assert profile.keywords["exptime"] == ("EXPOSURE",) and profile.keywords["object"] == ("TARGET",)
    assert profile.keywords["filter"] == GENERIC_PROFILE.keywords["filter"]
    assert (profile.gain, profile.site_lon, profile.time_keywords) == (2.6, -76.93, ("DATE-OBS",))
    assert not profile.is_generic


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"gian": 2.6}, r"unknown setting\(s\) in \[instruments.cam\]: gian"),
        ({"gain": "2.6"}, "gain must be a number"),
        ({"gain": -1}, "gain must be positive"),
        ({"match": {"INSTRUME": "[unclosed"}}, "not a valid regular expression"),
        ({"match": "ST-8"}, "match must be a table"),
        ({"keywords": {"exposure": ["EXPTIME"]}}, "keywords.exposure: unknown quantity"),
        ({"keywords": {"exptime": [1, 2]}}, "must be a list of keyword names"),
        ({"frame_types": {"Cal": "calibration"}}, "must be one of bias, dark, flat, light, unclassified"),
        ({"filters": {"g": 1}}, "filters must be a table"),
        ({"overscan": "1:10,1:20"}, "must be a FITS section"),
        ({"site": {"lat": 95}}, "site.lat = 95 is out of range"),
        ({"site": {"elevation": 5}}, "site must be a table with lat, lon and/or height"),
        ({"time_keywords": []}, "time_keywords must be a non-empty list"),
        ({"ccd_temp_kelvin": "yes"}, "ccd_temp_kelvin must be true, false or"),
        ({"longitude_west_positive": 1}, "must be true or false"),
        ({"default_saturation": "max"}, "default_saturation must be a number"),
    ],
)
def test_from_dict_rejects_bad_settings(settings, message):
    with pytest.raises(ProfileError, match=message):
        InstrumentProfile.from_dict("cam", settings)


def test_select_profile_first_match_wins_generic_last(tmp_path):
    profiles = load_profiles({
        "st8": {"match": {"INSTRUME": "st-8"}},  # case-insensitive search
        "st8-14in": {"match": {"INSTRUME": "ST-8", "TELESCOP": "14"}},
        "lco": {"match": {"TELESCOP": r"^1m0-\d+$"}},
    })
    assert [p.name for p in profiles] == ["st8", "st8-14in", "lco", "generic"]
    st8 = frame_header(tmp_path, {"INSTRUME": "SBIG ST-8 3 CCD Camera", "TELESCOP": "14 inch"})
    assert select_profile(st8, profiles).name == "st8"
    assert select_profile(st8, profiles[1:]).name == "st8-14in"
    assert select_profile(frame_header(tmp_path, {"TELESCOP": "1m0-05"}), profiles).name == "lco"
    assert select_profile(frame_header(tmp_path, {"TELESCOP": "2m0-01"}), profiles).is_generic
    assert select_profile(frame_header(tmp_path, {}), profiles[:1]).is_generic  # generic even when not listed


def test_generic_table_customises_the_fallback(tmp_path):
    profiles = load_profiles({"generic": {"site": {"lat": 10.0, "lon": 20.0}}, "x": {"match": {"INSTRUME": "X"}}})
    assert [p.name for p in profiles] == ["x", "generic"]
    info = select_profile(frame_header(tmp_path, {}), profiles).read(frame_header(tmp_path, {}))
    assert (info.site_lat, info.site_lon) == (10.0, 20.0)
    with pytest.raises(ProfileError, match="cannot have match"):
        load_profiles({"generic": {"match": {"INSTRUME": "X"}}})
