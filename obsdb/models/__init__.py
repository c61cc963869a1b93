"""SQLAlchemy models of the obsdb catalog (the migrations are the truth)."""

from obsdb.models.base import Base
from obsdb.models.frames import FRAME_STATES, IMAGE_TYPES, Frame, Instrument, RejectedFile

__all__ = ["FRAME_STATES", "IMAGE_TYPES", "Base", "Frame", "Instrument", "RejectedFile"]
