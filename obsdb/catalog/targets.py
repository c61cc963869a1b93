"""Targets: named positions measured on every frame that covers them (forced photometry).

A target is a source (created, or the existing one within ``MERGE_ARCSEC``), so its light
curve is a source's light curve with a name.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from obsdb.catalog import sources as source_table
from obsdb.catalog.crossmatch import match_positions
from obsdb.models.photometry import Target

# A target this close to a known source is that source.
MERGE_ARCSEC = 1.5


@dataclass(frozen=True)
class TargetAdded:
    name: str
    source_id: int
    created_source: bool
    replaced: bool


def add_target(session: Session, name: str, ra: float, dec: float) -> TargetAdded:
    """Add or move target ``name`` (in the caller's transaction)."""
    name = name.strip()
    if not name:
        raise ValueError("a target needs a name")
    source_table.lock_sources(session)
    near = source_table.sources_in_cone(session, ra, dec, MERGE_ARCSEC / 3600.0)
    i, j, _ = match_positions([ra], [dec], near.ra, near.dec, MERGE_ARCSEC)
    created = len(j) == 0
    source_id = int(near.id[j[0]]) if not created else int(
        source_table.create_sources(session, [ra], [dec], frame_id=None)[0])
    existed = session.scalar(select(Target.id).where(Target.name == name)) is not None
    stmt = insert(Target).values(name=name, ra=ra, dec=dec, source_id=source_id)
    session.execute(stmt.on_conflict_do_update(index_elements=["name"],
                                               set_={"ra": ra, "dec": dec, "source_id": source_id}))
    return TargetAdded(name, source_id, created, existed)


def list_targets(session: Session) -> list[Target]:
    return list(session.scalars(select(Target).order_by(Target.name)))
