"""sources, measurements, frame solutions, zero points, ensembles, targets

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('ensembles',
    sa.Column('id', sa.Integer(), sa.Identity(always=False), nullable=False),
    sa.Column('field', sa.Text(), nullable=False),
    sa.Column('filter', sa.Text(), nullable=False),
    sa.Column('band', sa.Text(), nullable=True),
    sa.Column('colour', sa.Text(), nullable=True),
    sa.Column('colour_term', sa.Double(), nullable=True),
    sa.Column('tied_to_catalog', sa.Boolean(), nullable=False),
    sa.Column('n_frames', sa.Integer(), nullable=False),
    sa.Column('n_stars', sa.Integer(), nullable=False),
    sa.Column('n_observations', sa.Integer(), nullable=False),
    sa.Column('n_components', sa.Integer(), nullable=False),
    sa.Column('variables', postgresql.ARRAY(sa.BigInteger()), server_default='{}', nullable=False),
    sa.Column('rms', sa.Double(), nullable=True),
    sa.Column('stats', postgresql.JSONB(astext_type=sa.Text()), server_default='{}', nullable=False),
    sa.Column('obsdb_version', sa.Text(), nullable=False),
    sa.Column('config_hash', sa.Text(), nullable=False),
    sa.Column('solved_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ensembles'))
    )
    op.create_index('uq_ensembles_field_filter', 'ensembles', ['field', 'filter'], unique=True)
    op.create_table('sources',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('ra', sa.Double(), nullable=False),
    sa.Column('dec', sa.Double(), nullable=False),
    sa.Column('healpix', sa.BigInteger(), nullable=False),
    sa.Column('refcat_id', sa.SmallInteger(), nullable=True),
    sa.Column('refstar_id', sa.BigInteger(), nullable=True),
    sa.Column('pm_ra', sa.Double(), nullable=True),
    sa.Column('pm_dec', sa.Double(), nullable=True),
    sa.Column('epoch', sa.Double(), nullable=True),
    sa.Column('first_frame_id', sa.BigInteger(), nullable=True),
    sa.Column('stats', postgresql.JSONB(astext_type=sa.Text()), server_default='{}', nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['first_frame_id'], ['frames.id'], name=op.f('fk_sources_first_frame_id_frames'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sources'))
    )
    op.create_index('ix_sources_healpix', 'sources', ['healpix'], unique=False)
    op.create_table('wcs_attachments',
    sa.Column('frame_id', sa.BigInteger(), nullable=False),
    sa.Column('header', sa.Text(), nullable=False),
    sa.Column('source_path', sa.Text(), nullable=True),
    sa.Column('attached_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['frame_id'], ['frames.id'], name=op.f('fk_wcs_attachments_frame_id_frames'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('frame_id', name=op.f('pk_wcs_attachments'))
    )
    op.create_table('zeropoints',
    sa.Column('frame_id', sa.BigInteger(), nullable=False),
    sa.Column('filter', sa.Text(), nullable=True),
    sa.Column('band', sa.Text(), nullable=True),
    sa.Column('zp', sa.Double(), nullable=True),
    sa.Column('zp_err', sa.Double(), nullable=True),
    sa.Column('colour_term', sa.Double(), nullable=True),
    sa.Column('rms', sa.Double(), nullable=True),
    sa.Column('n_stars', sa.Integer(), server_default='0', nullable=False),
    sa.Column('ensemble_zp', sa.Double(), nullable=True),
    sa.Column('ensemble_zp_err', sa.Double(), nullable=True),
    sa.Column('ensemble_id', sa.Integer(), nullable=True),
    sa.Column('lim_mag_3', sa.Double(), nullable=True),
    sa.Column('lim_mag_5', sa.Double(), nullable=True),
    sa.Column('lim_mag_10', sa.Double(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['ensemble_id'], ['ensembles.id'], name=op.f('fk_zeropoints_ensemble_id_ensembles'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['frame_id'], ['frames.id'], name=op.f('fk_zeropoints_frame_id_frames'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('frame_id', name=op.f('pk_zeropoints'))
    )
    op.create_table('frame_solutions',
    sa.Column('frame_id', sa.BigInteger(), nullable=False),
    sa.Column('reduction_id', sa.BigInteger(), nullable=False),
    sa.Column('field', sa.Text(), nullable=False),
    sa.Column('wcs_header', sa.Text(), nullable=False),
    sa.Column('method', sa.Text(), nullable=False),
    sa.Column('reference_frame_id', sa.BigInteger(), nullable=True),
    sa.Column('wcs_rms_px', sa.Double(), nullable=True),
    sa.Column('wcs_rms_arcsec', sa.Double(), nullable=True),
    sa.Column('n_astrometric_matches', sa.Integer(), nullable=True),
    sa.Column('ra_center', sa.Double(), nullable=False),
    sa.Column('dec_center', sa.Double(), nullable=False),
    sa.Column('radius_deg', sa.Double(), nullable=False),
    sa.Column('pixel_scale', sa.Double(), nullable=False),
    sa.Column('fwhm', sa.Double(), nullable=True),
    sa.Column('ellipticity', sa.Double(), nullable=True),
    sa.Column('sky', sa.Double(), nullable=True),
    sa.Column('sky_rms', sa.Double(), nullable=True),
    sa.Column('n_detections', sa.Integer(), nullable=False),
    sa.Column('aperture_correction', sa.Double(), nullable=True),
    sa.Column('apertures', postgresql.ARRAY(sa.REAL()), nullable=False),
    sa.Column('aperture_index', sa.Integer(), nullable=False),
    sa.Column('annulus', postgresql.ARRAY(sa.REAL()), nullable=False),
    sa.Column('airmass', sa.Double(), nullable=True),
    sa.Column('mjd_mid', sa.Double(), nullable=True),
    sa.Column('bjd_tdb_center', sa.Double(), nullable=True),
    sa.Column('flags', sa.Integer(), server_default='0', nullable=False),
    sa.Column('obsdb_version', sa.Text(), nullable=False),
    sa.Column('config_hash', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("method IN ('refcat', 'aligned', 'attached', 'header')", name=op.f('ck_frame_solutions_method')),
    sa.ForeignKeyConstraint(['frame_id'], ['frames.id'], name=op.f('fk_frame_solutions_frame_id_frames'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['reduction_id'], ['reductions.id'], name=op.f('fk_frame_solutions_reduction_id_reductions'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['reference_frame_id'], ['frames.id'], name=op.f('fk_frame_solutions_reference_frame_id_frames'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('frame_id', name=op.f('pk_frame_solutions'))
    )
    op.create_table('measurements',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('frame_id', sa.BigInteger(), nullable=False),
    sa.Column('source_id', sa.BigInteger(), nullable=False),
    sa.Column('x', sa.REAL(), nullable=False),
    sa.Column('y', sa.REAL(), nullable=False),
    sa.Column('ra', sa.Double(), nullable=False),
    sa.Column('dec', sa.Double(), nullable=False),
    sa.Column('mjd', sa.Double(), nullable=True),
    sa.Column('bjd_tdb', sa.Double(), nullable=True),
    sa.Column('fluxes', postgresql.ARRAY(sa.REAL()), nullable=False),
    sa.Column('flux_errs', postgresql.ARRAY(sa.REAL()), nullable=False),
    sa.Column('flux', sa.REAL(), nullable=True),
    sa.Column('flux_err', sa.REAL(), nullable=True),
    sa.Column('background', sa.REAL(), nullable=True),
    sa.Column('snr', sa.REAL(), nullable=True),
    sa.Column('inst_mag', sa.Float(), nullable=True),
    sa.Column('inst_mag_err', sa.Float(), nullable=True),
    sa.Column('mag', sa.Float(), nullable=True),
    sa.Column('mag_err', sa.Float(), nullable=True),
    sa.Column('upper_limit', sa.REAL(), nullable=True),
    sa.Column('flags', sa.Integer(), server_default='0', nullable=False),
    sa.Column('forced', sa.Boolean(), server_default='false', nullable=False),
    sa.ForeignKeyConstraint(['frame_id'], ['frames.id'], name=op.f('fk_measurements_frame_id_frames'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['source_id'], ['sources.id'], name=op.f('fk_measurements_source_id_sources'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_measurements'))
    )
    op.create_index('ix_measurements_frame', 'measurements', ['frame_id'], unique=False)
    op.create_index('ix_measurements_source_frame', 'measurements', ['source_id', 'frame_id'], unique=True)
    op.create_table('targets',
    sa.Column('id', sa.Integer(), sa.Identity(always=False), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('ra', sa.Double(), nullable=False),
    sa.Column('dec', sa.Double(), nullable=False),
    sa.Column('source_id', sa.BigInteger(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['source_id'], ['sources.id'], name=op.f('fk_targets_source_id_sources')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_targets')),
    sa.UniqueConstraint('name', name=op.f('uq_targets_name'))
    )


def downgrade() -> None:
    op.drop_table('targets')
    op.drop_index('ix_measurements_source_frame', table_name='measurements')
    op.drop_index('ix_measurements_frame', table_name='measurements')
    op.drop_table('measurements')
    op.drop_table('frame_solutions')
    op.drop_table('zeropoints')
    op.drop_table('wcs_attachments')
    op.drop_index('ix_sources_healpix', table_name='sources')
    op.drop_table('sources')
    op.drop_index('uq_ensembles_field_filter', table_name='ensembles')
    op.drop_table('ensembles')
