"""Which calibration frames are combined together into one master."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from sqlalchemy import Select, select

from obsdb.models import Frame

CALIBRATION_KINDS = ("bias", "dark", "flat")


@dataclass(frozen=True)
class CalibrationGroup:
    """Frames of one instrument, kind, binning and shape, (filter for flats), (exposure
    time for darks), taken on one night."""

    instrument_id: int
    kind: str
    xbinning: int
    ybinning: int
    naxis1: int
    naxis2: int
    night: date | None
    filter: str | None = None
    exptime: float | None = None

    @classmethod
    def of(cls, frame: Frame) -> CalibrationGroup:
        if frame.imagetyp not in CALIBRATION_KINDS:
            raise ValueError(f"frame {frame.id} is a {frame.imagetyp} frame, not a calibration")
        return cls(
            instrument_id=frame.instrument_id,
            kind=frame.imagetyp,
            xbinning=frame.xbinning,
            ybinning=frame.ybinning,
            naxis1=frame.naxis1,
            naxis2=frame.naxis2,
            night=frame.night,
            filter=frame.filter if frame.imagetyp == "flat" else None,
            exptime=round(frame.exptime or 0.0, 3) if frame.imagetyp == "dark" else None,
        )

    @property
    def key(self) -> str:
        detail = ""
        if self.kind == "flat":
            detail = f"filter={self.filter}"
        elif self.kind == "dark":
            detail = f"exptime={self.exptime:g}"
        return (
            f"{self.kind}/instrument={self.instrument_id}/bin={self.xbinning}x{self.ybinning}"
            f"/size={self.naxis1}x{self.naxis2}/{detail}/night={self.night}"
        )

    def members(self) -> Select[tuple[Frame]]:
        """Live frames of the group, in time order."""
        stmt = select(Frame).where(
            Frame.superseded_at.is_(None),
            Frame.instrument_id == self.instrument_id,
            Frame.imagetyp == self.kind,
            Frame.xbinning == self.xbinning,
            Frame.ybinning == self.ybinning,
            Frame.naxis1 == self.naxis1,
            Frame.naxis2 == self.naxis2,
            Frame.night.is_(None) if self.night is None else Frame.night == self.night,
        )
        if self.kind == "flat":
            stmt = stmt.where(Frame.filter.is_(None) if self.filter is None else Frame.filter == self.filter)
        if self.kind == "dark":
            stmt = stmt.where(Frame.exptime.between(self.exptime - 5e-4, self.exptime + 5e-4))
        return stmt.order_by(Frame.date_obs, Frame.id)
