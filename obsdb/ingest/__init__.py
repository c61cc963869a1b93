"""Registering raw FITS files as frames in the catalog."""

from obsdb.ingest.discover import iter_candidate_files
from obsdb.ingest.service import IngestOutcome, IngestReport, Ingestor

__all__ = ["IngestOutcome", "IngestReport", "Ingestor", "iter_candidate_files"]
