"""frame_solutions.sources_upto (the newest source a frame's measurement saw) and psf_beta

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30

Sources are created under one lock, so their ids rise in the order the measurements
that made them committed: a frame measured with ``sources_upto = N`` saw every source
up to N and none after. A source of the frame's footprint with a larger id and no
measurement on the frame is one the frame has not been measured at (a star first
detected on a later frame, or a target added later); ``obsdb.photometry.catch_up``
finds such frames and measures them at those sources. NULL: measured before this column.

``psf_beta``, the Moffat beta of the frame's PSF fit, with ``fwhm`` lets those later
measurements flag catalog blends as the frame's own measurement did.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column('frame_solutions', sa.Column('sources_upto', sa.BigInteger(), nullable=True))
    op.add_column('frame_solutions', sa.Column('psf_beta', sa.REAL(), nullable=True))


def downgrade() -> None:
    op.drop_column('frame_solutions', 'psf_beta')
    op.drop_column('frame_solutions', 'sources_upto')
