"""Frame types: every alias, every keyword, every inference path, and the reasons."""

from __future__ import annotations

from pathlib import Path

import pytest

from obsdb.instruments import GENERIC_PROFILE, InstrumentProfile, classify
from obsdb.instruments.keywords import FRAME_TYPE_ALIASES, KEYWORDS

from fitsmaker import frame_header


@pytest.mark.parametrize("alias, kind", sorted(FRAME_TYPE_ALIASES.items()))
def test_every_alias(alias, kind):
    for written in (alias, alias.upper(), alias.title(), alias.replace(" ", "_"), f"  {alias}  "):
        got = classify("IMAGETYP", written, exptime=5.0, object_name=None, filter_name=None, filename=None)
        assert got.imagetyp == kind, written
        assert got.source == f"IMAGETYP={written!r}"


@pytest.mark.parametrize(
    "written, kind",
    [
        ("Bias Frame", "bias"), ("BIAS", "bias"), ("zero", "bias"), ("Bias", "bias"),
        ("Dark Frame", "dark"), ("DARK", "dark"),
        ("Flat Field", "flat"), ("Flat Frame", "flat"), ("FLAT", "flat"), ("SKYFLAT", "flat"),
        ("DOMEFLAT", "flat"), ("TWIFLAT", "flat"), ("LAMPFLAT", "flat"), ("flat", "flat"),
        ("Light Frame", "light"), ("LIGHT", "light"), ("object", "light"), ("science", "light"),
        ("EXPOSE", "light"), ("STANDARD", "light"), ("Tricolor Image", "light"),
    ],
)
def test_aliases_named_in_the_design(written, kind):
    got = classify("IMAGETYP", written, exptime=1.0, object_name=None, filter_name=None, filename=None)
    assert got.imagetyp == kind


@pytest.mark.parametrize("keyword", KEYWORDS["imagetyp"])
def test_every_frame_type_keyword_in_a_file(tmp_path, keyword):
    header = frame_header(tmp_path, {keyword: "Dark Frame", "EXPTIME": 0.0})
    info = GENERIC_PROFILE.read(header, "x.fits")
    assert info.imagetyp == "dark"  # the keyword wins over EXPTIME = 0
    assert info.imagetyp_source == f"{keyword}='Dark Frame'"


def test_first_frame_type_keyword_wins(tmp_path):
    header = frame_header(tmp_path, {"IMAGETYP": "Flat Field", "OBSTYPE": "BIAS"})
    assert GENERIC_PROFILE.read(header).imagetyp == "flat"


@pytest.mark.parametrize("written", ["Focus", "GUIDE", "arc", "Test"])
def test_non_frames_are_unclassified_with_reason(written):
    got = classify("OBSTYPE", written, exptime=0.0, object_name="bias", filter_name="V", filename="bias.fits")
    assert got.imagetyp == "unclassified"
    assert got.source == f"OBSTYPE={written!r} is neither a calibration nor a science frame"


# -- inference: one test per path --------------------------------------------------------


def _infer(tmp_path, cards: dict, filename: str = "frame.fits"):
    info = GENERIC_PROFILE.read(frame_header(tmp_path, cards, name=filename), filename)
    return info.imagetyp, info.imagetyp_source


def test_infer_bias_from_zero_exposure(tmp_path):
    assert _infer(tmp_path, {"EXPTIME": 0.0, "FILTER": "V"}) == ("bias", "no frame-type keyword; EXPTIME=0")


def test_infer_from_unknown_keyword_value_keeps_it_in_the_reason(tmp_path):
    kind, source = _infer(tmp_path, {"IMAGETYP": "Calibration?", "EXPTIME": 0.0})
    assert kind == "bias"
    assert source == "IMAGETYP='Calibration?' is not a known frame type; EXPTIME=0"


@pytest.mark.parametrize(
    "obj, kind",
    [("Bias", "bias"), ("zero 001", "bias"), ("darks_300s", "dark"), ("Dark", "dark"), ("SkyFlat g", "flat"),
     ("flat", "flat"), ("twilight flats", "flat"), ("Dome Flat R", "flat"), ("DarkFlat", "dark")],
)
def test_infer_from_object(tmp_path, obj, kind):
    assert _infer(tmp_path, {"OBJECT": obj, "EXPTIME": 30.0, "FILTER": "V"}) == (
        kind, f"no frame-type keyword; OBJECT={obj!r}")


@pytest.mark.parametrize(
    "filename, kind",
    [("flat-g-001.fits", "flat"), ("bias_001.fit", "bias"), ("Dark-300s.fits.gz", "dark"),
     ("zero.0003.fits", "bias"), ("skyflat_V_02.fts", "flat"), ("darkflat_01.fits", "dark"),
     ("2024-03-01_twilight_R.fits", "flat")],
)
def test_infer_from_filename(tmp_path, filename, kind):
    got = _infer(tmp_path, {"EXPTIME": 30.0}, filename=filename)
    stem = filename.split(".f")[0]
    assert got == (kind, f"no frame-type keyword; filename {stem!r}")


def test_object_hint_beats_filename(tmp_path):
    assert _infer(tmp_path, {"OBJECT": "dark", "EXPTIME": 30.0}, filename="flat-001.fits")[0] == "dark"


def test_infer_light_from_object_exposure_and_filter(tmp_path):
    assert _infer(tmp_path, {"OBJECT": "M 31", "EXPTIME": 120.0, "FILTER": "V"}, filename="m31-001.fits") == (
        "light", "no frame-type keyword; OBJECT='M 31', EXPTIME=120, filter 'V'")


@pytest.mark.parametrize(
    "cards, detail",
    [
        ({"EXPTIME": 30.0}, "no OBJECT, no filter"),
        ({"OBJECT": "M 31", "EXPTIME": 30.0}, "no filter"),
        ({"OBJECT": "M 31", "FILTER": "V"}, "no usable EXPTIME"),
        ({"OBJECT": "M 31", "FILTER": "V", "EXPTIME": "abc"}, "no usable EXPTIME"),
        ({}, "no OBJECT, no usable EXPTIME, no filter"),
    ],
)
def test_unclassified_with_reason(tmp_path, cards, detail):
    kind, source = _infer(tmp_path, cards, filename="img0001.fits")
    assert kind == "unclassified"
    assert source == f"no frame-type keyword; cannot infer the type ({detail}; no hint in OBJECT or file name)"


def test_name_hints_need_whole_words(tmp_path):
    # 'zeropoint' and 'flatiron' contain hint words but are not hints.
    assert _infer(tmp_path, {"OBJECT": "zeropoint field", "EXPTIME": 30.0}, filename="flatiron.fits")[0] == (
        "unclassified")


def test_profile_adds_aliases(tmp_path):
    header = frame_header(tmp_path, {"IMAGETYP": "Cal-B", "EXPTIME": 12.0})
    assert GENERIC_PROFILE.read(header).imagetyp == "unclassified"
    profile = InstrumentProfile.from_dict("cam", {"frame_types": {"cal b": "bias", "LIGHT": "flat"}})
    info = profile.read(header)
    assert (info.imagetyp, info.imagetyp_source) == ("bias", "IMAGETYP='Cal-B'")
    header["IMAGETYP"] = "Light"
    assert profile.read(header).imagetyp == "flat"  # a profile's alias overrides the built-in one
