"""SQLAlchemy models of the obsdb catalog (the migrations are the truth)."""

from obsdb.models.base import Base
from obsdb.models.calibration import MASTER_KINDS, Master, MasterInput, Reduction
from obsdb.models.frames import FRAME_STATES, IMAGE_TYPES, Frame, Instrument, RejectedFile

__all__ = [
    "FRAME_STATES",
    "IMAGE_TYPES",
    "MASTER_KINDS",
    "Base",
    "Frame",
    "Instrument",
    "Master",
    "MasterInput",
    "Reduction",
    "RejectedFile",
]
