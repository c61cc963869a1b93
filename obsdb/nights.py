"""The observing night a frame belongs to."""

from __future__ import annotations

from datetime import date, datetime, timedelta


def observing_night(when_utc: datetime, lon_deg: float | None) -> date:
    """Local date at the start of the night that contains ``when_utc``.

    Local mean solar time is UTC + longitude/15 h; shifting it back by 12 h puts a whole
    night (evening to morning, calibrations at either end) on one date, the way observers
    name their nights. Without a known longitude, Greenwich is assumed.
    """
    local = when_utc + timedelta(hours=(lon_deg or 0.0) / 15.0)
    return (local - timedelta(hours=12)).date()
