"""instruments, frames and rejected files

Revision ID: 0001
Revises: 
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('instruments',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('profile', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_instruments')),
    sa.UniqueConstraint('name', name=op.f('uq_instruments_name'))
    )
    op.create_table('rejected_files',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=True),
    sa.Column('size_bytes', sa.BigInteger(), nullable=True),
    sa.Column('kind', sa.Text(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('quarantine_path', sa.Text(), nullable=True),
    sa.Column('attempts', sa.Integer(), server_default='1', nullable=False),
    sa.Column('first_seen', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('last_seen', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_rejected_files')),
    sa.UniqueConstraint('sha256', name=op.f('uq_rejected_files_sha256'))
    )
    op.create_index('ix_rejected_files_path', 'rejected_files', ['path'], unique=False)
    op.create_table('frames',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('instrument_id', sa.Integer(), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('size_bytes', sa.BigInteger(), nullable=False),
    sa.Column('file_mtime', sa.DateTime(timezone=True), nullable=False),
    sa.Column('header', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('imagetyp', sa.Text(), nullable=False),
    sa.Column('imagetyp_source', sa.Text(), nullable=True),
    sa.Column('object', sa.Text(), nullable=True),
    sa.Column('filter', sa.Text(), nullable=True),
    sa.Column('exptime', sa.Double(), nullable=True),
    sa.Column('xbinning', sa.Integer(), server_default='1', nullable=False),
    sa.Column('ybinning', sa.Integer(), server_default='1', nullable=False),
    sa.Column('naxis1', sa.Integer(), nullable=False),
    sa.Column('naxis2', sa.Integer(), nullable=False),
    sa.Column('gain', sa.Double(), nullable=True),
    sa.Column('read_noise', sa.Double(), nullable=True),
    sa.Column('saturation', sa.Double(), nullable=True),
    sa.Column('ccd_temp', sa.Double(), nullable=True),
    sa.Column('date_obs', sa.DateTime(timezone=True), nullable=True),
    sa.Column('mjd_start', sa.Double(), nullable=True),
    sa.Column('mjd_mid', sa.Double(), nullable=True),
    sa.Column('time_source', sa.Text(), nullable=True),
    sa.Column('night', sa.Date(), nullable=True),
    sa.Column('ra', sa.Double(), nullable=True),
    sa.Column('dec', sa.Double(), nullable=True),
    sa.Column('airmass', sa.Double(), nullable=True),
    sa.Column('has_wcs', sa.Boolean(), server_default='false', nullable=False),
    sa.Column('pixel_scale', sa.Double(), nullable=True),
    sa.Column('telescope', sa.Text(), nullable=True),
    sa.Column('camera', sa.Text(), nullable=True),
    sa.Column('warnings', postgresql.ARRAY(sa.Text()), server_default='{}', nullable=False),
    sa.Column('state', sa.Text(), server_default='ingested', nullable=False),
    sa.Column('state_reason', sa.Text(), nullable=True),
    sa.Column('tries', sa.Integer(), server_default='0', nullable=False),
    sa.Column('version', sa.Integer(), server_default='1', nullable=False),
    sa.Column('supersedes_id', sa.BigInteger(), nullable=True),
    sa.Column('superseded_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('ingested_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("imagetyp IN ('bias', 'dark', 'flat', 'light', 'unclassified')", name=op.f('ck_frames_imagetyp')),
    sa.CheckConstraint("state IN ('ingested', 'calibrating', 'reduced', 'needs_wcs', 'measured', 'failed', 'superseded')", name=op.f('ck_frames_state')),
    sa.CheckConstraint('exptime IS NULL OR exptime >= 0', name=op.f('ck_frames_exptime')),
    sa.CheckConstraint('xbinning >= 1 AND ybinning >= 1', name=op.f('ck_frames_binning')),
    sa.ForeignKeyConstraint(['instrument_id'], ['instruments.id'], name=op.f('fk_frames_instrument_id_instruments')),
    sa.ForeignKeyConstraint(['supersedes_id'], ['frames.id'], name=op.f('fk_frames_supersedes_id_frames')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_frames')),
    sa.UniqueConstraint('sha256', name=op.f('uq_frames_sha256'))
    )
    op.create_index('ix_frames_date_obs', 'frames', ['date_obs'], unique=False)
    op.create_index('ix_frames_state', 'frames', ['state'], unique=False)
    op.create_index('ix_frames_type_filter_night', 'frames', ['imagetyp', 'filter', 'night'], unique=False)
    op.create_index('uq_frames_live_path', 'frames', ['path'], unique=True, postgresql_where=sa.text('superseded_at IS NULL'))


def downgrade() -> None:
    op.drop_index('uq_frames_live_path', table_name='frames', postgresql_where=sa.text('superseded_at IS NULL'))
    op.drop_index('ix_frames_type_filter_night', table_name='frames')
    op.drop_index('ix_frames_state', table_name='frames')
    op.drop_index('ix_frames_date_obs', table_name='frames')
    op.drop_table('frames')
    op.drop_index('ix_rejected_files_path', table_name='rejected_files')
    op.drop_table('rejected_files')
    op.drop_table('instruments')
