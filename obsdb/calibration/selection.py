"""Choosing the master for a frame: one query, the BANZAI way.

Same instrument, kind, binning and shape (and filter for flats), not marked bad, valid
at the frame's time, CCD temperature within tolerance when both know it; then the
closest in time. Calibrations taken after the lights count: real nights often end with
them. For darks, one of the frame's own exposure time wins over a scaled one.
"""

from __future__ import annotations

from sqlalchemy import case, func, literal, or_, select
from sqlalchemy.orm import Session

from obsdb.config import CalibrationSettings
from obsdb.models import Frame, Master


def best_master(session: Session, frame: Frame, kind: str, settings: CalibrationSettings) -> Master | None:
    """The master of ``kind`` that should calibrate ``frame``, or None."""
    stmt = select(Master).where(
        Master.instrument_id == frame.instrument_id,
        Master.kind == kind,
        Master.xbinning == frame.xbinning,
        Master.ybinning == frame.ybinning,
        Master.naxis1 == frame.naxis1,
        Master.naxis2 == frame.naxis2,
        Master.is_bad.is_(False),
        Master.path.is_not(None),
    )
    if kind == "flat":
        stmt = stmt.where(Master.filter.is_(None) if frame.filter is None else Master.filter == frame.filter)
    when = frame.date_obs
    if when is not None:
        stmt = stmt.where(
            or_(Master.valid_from.is_(None), Master.valid_from <= when),
            or_(Master.valid_until.is_(None), Master.valid_until >= when),
        )
    if frame.ccd_temp is not None:
        stmt = stmt.where(
            or_(Master.ccd_temp.is_(None),
                func.abs(Master.ccd_temp - frame.ccd_temp) <= settings.temperature_tolerance)
        )
    order = []
    if kind == "dark":
        same_exptime = func.abs(Master.exptime - (frame.exptime or 0.0)) < 1e-3
        order.append(case((same_exptime, 0), else_=1))
    if when is not None:
        order.append(func.abs(func.extract("epoch", Master.date_obs - literal(when))).nulls_last())
    order.append(Master.id.desc())
    return session.scalars(stmt.order_by(*order).limit(1)).first()
