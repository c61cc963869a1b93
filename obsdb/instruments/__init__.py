"""Instrument profiles: reading any camera's FITS header into a :class:`FrameInfo`.

``load_profiles(settings.instruments)`` builds the configured profiles (the generic one
last), ``select_profile(header, profiles)`` picks the one for a header, and
``profile.read(header, filename)`` gives the pure :class:`FrameInfo`.
"""

from obsdb.instruments.frametype import IMAGE_TYPES, FrameType, classify
from obsdb.instruments.obstime import ObsTime, resolve_time
from obsdb.instruments.profile import (
    GENERIC_PROFILE,
    FrameInfo,
    InstrumentProfile,
    ProfileError,
    load_profiles,
    select_profile,
)

__all__ = [
    "GENERIC_PROFILE",
    "IMAGE_TYPES",
    "FrameInfo",
    "FrameType",
    "InstrumentProfile",
    "ObsTime",
    "ProfileError",
    "classify",
    "load_profiles",
    "resolve_time",
    "select_profile",
]
