"""SQLAlchemy models of the obsdb catalog (the migrations are the truth)."""

from obsdb.models.base import Base
from obsdb.models.calibration import MASTER_KINDS, Master, MasterInput, Reduction
from obsdb.models.catalog import RefCatalog, RefStar
from obsdb.models.frames import FRAME_STATES, IMAGE_TYPES, Frame, Instrument, RejectedFile
from obsdb.models.photometry import (
    Ensemble,
    FrameSolution,
    Measurement,
    Source,
    Target,
    WcsAttachment,
    ZeroPoint,
)

__all__ = [
    "FRAME_STATES",
    "IMAGE_TYPES",
    "MASTER_KINDS",
    "Base",
    "Ensemble",
    "Frame",
    "FrameSolution",
    "Instrument",
    "Master",
    "MasterInput",
    "Measurement",
    "Reduction",
    "RefCatalog",
    "RefStar",
    "RejectedFile",
    "Source",
    "Target",
    "WcsAttachment",
    "ZeroPoint",
]
