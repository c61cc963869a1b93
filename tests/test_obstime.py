"""Observation times: every way a header can say when an exposure started, to UTC."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from astropy.time import Time

from obsdb.instruments import GENERIC_PROFILE, InstrumentProfile
from obsdb.instruments.obstime import datetime_to_mjd

from fitsmaker import frame_header

NOW = datetime(2025, 1, 1, tzinfo=UTC)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


TIME_CASES = [
    # id, cards, exptime, expected start (UTC), time_source starts with
    ("iso-T", {"DATE-OBS": "2018-10-14T03:07:02"}, 300, "2018-10-14T03:07:02", "DATE-OBS"),
    ("iso-space-millis", {"DATE-OBS": "2018-10-14 03:07:02.123"}, 300, "2018-10-14T03:07:02.123", "DATE-OBS"),
    ("iso-Z", {"DATE-OBS": "2018-10-14T03:07:02Z"}, 300, "2018-10-14T03:07:02", "DATE-OBS"),
    ("iso-micro", {"DATE-OBS": "2018-10-14T03:07:02.123456"}, 300, "2018-10-14T03:07:02.123456", "DATE-OBS"),
    ("utc-offset", {"DATE-OBS": "2017-12-19T18:33:43.317-0700"}, 60, "2017-12-20T01:33:43.317",
     "DATE-OBS (local time, UTC-07:00)"),
    ("utc-offset-colon", {"DATE-OBS": "2017-12-20T07:03:43.317+05:30"}, 60, "2017-12-20T01:33:43.317",
     "DATE-OBS (local time, UTC+05:30)"),
    ("date+TIME-OBS", {"DATE-OBS": "2018-10-14", "TIME-OBS": "03:07:02.5"}, 300, "2018-10-14T03:07:02.5",
     "DATE-OBS+TIME-OBS"),
    ("date+UT", {"DATE-OBS": "2018-10-14", "UT": "03:07:02"}, 300, "2018-10-14T03:07:02", "DATE-OBS+UT"),
    ("date+UT-decimal-hours", {"DATE-OBS": "2018-10-14", "UT": 3.5}, 300, "2018-10-14T03:30:00", "DATE-OBS+UT"),
    ("date+UTSTART", {"DATE-OBS": "2018-10-14", "UTSTART": "03:07:02"}, 300, "2018-10-14T03:07:02",
     "DATE-OBS+UTSTART"),
    ("date+UT-START", {"DATE-OBS": "2018-10-14", "UT-START": "03 07 02"}, 300, "2018-10-14T03:07:02",
     "DATE-OBS+UT-START"),
    ("date+UT-OBS", {"DATE-OBS": "2018-10-14", "UT-OBS": "03:07:02"}, 300, "2018-10-14T03:07:02",
     "DATE-OBS+UT-OBS"),
    ("UT-OBS-full", {"UT-OBS": "2018-10-14T03:07:02"}, 300, "2018-10-14T03:07:02", "UT-OBS"),
    ("old-dd/mm/yy+TIME-OBS", {"DATE-OBS": "14/10/18", "TIME-OBS": "03:07:02"}, 300, "2018-10-14T03:07:02",
     "DATE-OBS+TIME-OBS"),
    ("old-dd/mm/yy-1990s", {"DATE-OBS": "14/10/98", "UT": "03:07:02"}, 300, "1998-10-14T03:07:02",
     "DATE-OBS+UT"),
    ("DATE-BEG", {"DATE-BEG": "2018-10-14T03:07:02.25"}, 300, "2018-10-14T03:07:02.25", "DATE-BEG"),
    ("DATE-AVG-mid", {"DATE-AVG": "2018-10-14T03:09:32"}, 300, "2018-10-14T03:07:02",
     "DATE-AVG (mid-exposure, minus EXPTIME/2)"),
    ("MJD-OBS", {"MJD-OBS": 58405.13000005}, 300, "2018-10-14T03:07:12.00432", "MJD-OBS"),
    ("MJD-OBS-string", {"MJD-OBS": "58405.5"}, 300, "2018-10-14T12:00:00", "MJD-OBS"),
    ("MJD-AVG-mid", {"MJD-AVG": 58405.1325}, 300, "2018-10-14T03:08:18", "MJD-AVG (mid-exposure"),
    ("JD-maxim", {"JD": 2458405.6298842593}, 300, "2018-10-14T03:07:02", "JD"),
    ("JD-noise", {"JD": 2458405.6334259259}, 300, "2018-10-14T03:12:08", "JD"),
    ("TIMESYS-TT", {"DATE-OBS": "2018-10-14T03:08:11.184", "TIMESYS": "TT"}, 300, "2018-10-14T03:07:02",
     "DATE-OBS (TT converted to UTC)"),
    ("TIMESYS-TAI", {"DATE-OBS": "2018-10-14T03:07:39", "TIMESYS": "TAI"}, 300, "2018-10-14T03:07:02",
     "DATE-OBS (TAI converted to UTC)"),
    ("TIMESYS-GPS", {"DATE-OBS": "2018-10-14T03:07:20", "TIMESYS": "GPS"}, 300, "2018-10-14T03:07:02",
     "DATE-OBS (GPS converted to UTC)"),
    ("TIMESYS-TT-MJD", {"MJD-OBS": 58405.13068500, "TIMESYS": "TT"}, 300, "2018-10-14T03:07:02.000",
     "MJD-OBS (TT converted to UTC)"),
    ("TIMESYS-UTC", {"DATE-OBS": "2018-10-14T03:07:02", "TIMESYS": "UTC"}, 300, "2018-10-14T03:07:02", "DATE-OBS"),
    # Several sources: the most precise wins; an agreeing standard keyword is named.
    ("MJD-beats-whole-seconds", {"DATE-OBS": "2018-10-14T03:07:02", "MJD-OBS": 58405.1298871528}, 300,
     "2018-10-14T03:07:02.250002", "MJD-OBS; agrees with DATE-OBS"),
    ("DATE-OBS-named-when-JD-agrees", {"DATE-OBS": "2018-10-14T03:07:02", "JD": 2458405.6298842593}, 300,
     "2018-10-14T03:07:02", "DATE-OBS; agrees with JD"),
    ("millis-beat-MJD-5-decimals", {"DATE-OBS": "2018-10-14T03:07:02.123", "MJD-OBS": 58405.12988}, 300,
     "2018-10-14T03:07:02.123", "DATE-OBS; agrees with MJD-OBS"),
    ("JD-HELIO-ignored", {"DATE-OBS": "2018-10-14T03:07:02", "JD-HELIO": 2458405.6373622133}, 300,
     "2018-10-14T03:07:02", "DATE-OBS"),
]


@pytest.mark.parametrize("cards, exptime, expected, source",
                         [c[1:] for c in TIME_CASES], ids=[c[0] for c in TIME_CASES])
def test_time_variants(tmp_path, cards, exptime, expected, source):
    header = frame_header(tmp_path, {"EXPTIME": exptime, **cards})
    info = GENERIC_PROFILE.read(header, "t.fits", now=NOW)
    assert info.date_obs == utc(expected)
    assert info.date_obs.tzinfo is not None and info.date_obs.utcoffset() == timedelta(0)
    assert info.time_source.startswith(source), info.time_source
    assert info.mjd_start == pytest.approx(Time(info.date_obs).mjd, abs=1e-9)
    assert info.mjd_mid == pytest.approx(info.mjd_start + exptime / 2 / 86400, abs=1e-9)
    assert not [w for w in info.warnings if "time" in w or "DATE" in w], info.warnings


def test_disagreeing_sources_warn(tmp_path):
    header = frame_header(tmp_path, {"EXPTIME": 60, "DATE-OBS": "2018-10-14T03:07:02",
                                     "JD": 2458405.6300000000 + 0.0001157})  # ~10 s later
    info = GENERIC_PROFILE.read(header, now=NOW)
    assert any("time keywords disagree" in w and "DATE-OBS" in w and "JD" in w for w in info.warnings)
    assert info.date_obs is not None


def test_profile_utc_offset_for_local_time(tmp_path):
    header = frame_header(tmp_path, {"EXPTIME": 30, "DATE-OBS": "2017-12-19T18:33:43.317", "JD": 2458107.5650846875})
    profile = InstrumentProfile.from_dict("mst-cam", {"utc_offset_hours": -7})
    info = profile.read(header, now=NOW)
    assert info.date_obs == utc("2017-12-20T01:33:43.317")
    assert "local time, UTC-07:00 per the profile" in info.time_source
    assert not any("disagree" in w for w in info.warnings)  # the JD (UTC by definition) now agrees


def test_profile_time_keywords_restrict_and_order(tmp_path):
    header = frame_header(tmp_path, {"EXPTIME": 30, "DATE-OBS": "2018-10-14T03:07:02.123456",
                                     "JD": 2458405.6298842593})
    profile = InstrumentProfile.from_dict("jd-first", {"time_keywords": ["JD", "DATE-OBS"]})
    info = profile.read(header, now=NOW)
    assert info.time_source.startswith("JD")
    assert info.date_obs == utc("2018-10-14T03:07:02")


def test_mid_time_without_exptime(tmp_path):
    header = frame_header(tmp_path, {"DATE-AVG": "2018-10-14T03:09:32"})
    info = GENERIC_PROFILE.read(header, now=NOW)
    assert info.date_obs == utc("2018-10-14T03:09:32")
    assert info.mjd_mid == pytest.approx(datetime_to_mjd(utc("2018-10-14T03:09:32")))
    assert any("exposure time unknown" in w for w in info.warnings)


@pytest.mark.parametrize(
    "cards, warning",
    [
        ({"DATE-OBS": "1900-01-01T00:00:00"}, "before 1950"),
        ({"DATE-OBS": "2999-01-01T00:00:00"}, "in the future"),
        ({"DATE-OBS": "yesterday"}, "not a date"),
        ({"DATE-OBS": 5}, "not a date"),
        ({"DATE-OBS": "2018-02-30T01:00:00"}, "not a valid date"),
        ({"DATE-OBS": "2018-10-14T25:61:00"}, "not a valid date"),
        ({"DATE-OBS": "2018-10-14"}, "no time of day"),
        ({"MJD-OBS": "soon"}, "not a number"),
        ({"JD-HELIO": 2458405.6373622133}, "no usable observation time"),
        ({}, "no usable observation time"),
        ({"DATE-OBS": "2018-10-14T03:07:02", "TIMESYS": "MARS"}, "not a known time scale"),
    ],
    ids=["1900", "future", "garbage", "number", "feb-30", "hour-25", "date-only", "mjd-text", "jd-helio-only", "none",
         "bad-timesys"],
)
def test_absurd_times_warn_and_never_raise(tmp_path, cards, warning):
    header = frame_header(tmp_path, {"EXPTIME": 10, **cards})
    info = GENERIC_PROFILE.read(header, now=NOW)
    assert any(warning in w for w in info.warnings), info.warnings
    if "TIMESYS" not in cards:
        assert info.date_obs is None and info.mjd_start is None and info.mjd_mid is None


def test_future_is_relative_to_now(tmp_path):
    header = frame_header(tmp_path, {"EXPTIME": 10, "DATE-OBS": "2025-01-01T20:00:00"})
    assert GENERIC_PROFILE.read(header, now=NOW).date_obs == utc("2025-01-01T20:00:00")  # < 1 day ahead
    assert GENERIC_PROFILE.read(header, now=NOW - timedelta(days=2)).date_obs is None
