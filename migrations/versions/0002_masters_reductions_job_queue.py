"""masters, master inputs, reductions and the job queue

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22

procrastinate's job-queue schema is applied from the SQL that ships with the pinned
procrastinate release (3.10); a procrastinate upgrade needs a migration that applies its
SQL migration files.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from procrastinate.schema import SchemaManager
from sqlalchemy.dialects import postgresql

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


OLD_STATES = "'ingested', 'calibrating', 'reduced', 'needs_wcs', 'measured', 'failed', 'superseded'"
NEW_STATES = (
    "'ingested', 'waiting', 'calibrating', 'reduced', 'combined', 'unused', "
    "'needs_wcs', 'measured', 'failed', 'superseded'"
)


def upgrade() -> None:
    op.execute(SchemaManager.get_schema())
    op.drop_constraint(op.f("ck_frames_state"), "frames", type_="check")
    op.create_check_constraint(op.f("ck_frames_state"), "frames", f"state IN ({NEW_STATES})")
    op.create_table('masters',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('group_key', sa.Text(), nullable=False),
    sa.Column('instrument_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.Text(), nullable=False),
    sa.Column('filter', sa.Text(), nullable=True),
    sa.Column('exptime', sa.Double(), nullable=True),
    sa.Column('xbinning', sa.Integer(), nullable=False),
    sa.Column('ybinning', sa.Integer(), nullable=False),
    sa.Column('naxis1', sa.Integer(), nullable=False),
    sa.Column('naxis2', sa.Integer(), nullable=False),
    sa.Column('night', sa.Date(), nullable=True),
    sa.Column('ccd_temp', sa.Double(), nullable=True),
    sa.Column('date_obs', sa.DateTime(timezone=True), nullable=True),
    sa.Column('valid_from', sa.DateTime(timezone=True), nullable=True),
    sa.Column('valid_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('n_inputs', sa.Integer(), nullable=False),
    sa.Column('stats', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('path', sa.Text(), nullable=True),
    sa.Column('is_bad', sa.Boolean(), server_default='false', nullable=False),
    sa.Column('bad_reason', sa.Text(), nullable=True),
    sa.Column('version', sa.Integer(), server_default='1', nullable=False),
    sa.Column('obsdb_version', sa.Text(), nullable=False),
    sa.Column('config_hash', sa.Text(), nullable=False),
    sa.Column('built_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("kind IN ('bias', 'dark', 'flat')", name=op.f('ck_masters_kind')),
    sa.ForeignKeyConstraint(['instrument_id'], ['instruments.id'], name=op.f('fk_masters_instrument_id_instruments')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_masters')),
    sa.UniqueConstraint('group_key', name=op.f('uq_masters_group_key'))
    )
    op.create_index('ix_masters_selection', 'masters', ['instrument_id', 'kind', 'xbinning', 'ybinning', 'filter'], unique=False)
    op.create_table('master_inputs',
    sa.Column('master_id', sa.BigInteger(), nullable=False),
    sa.Column('frame_id', sa.BigInteger(), nullable=False),
    sa.Column('used', sa.Boolean(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['frame_id'], ['frames.id'], name=op.f('fk_master_inputs_frame_id_frames')),
    sa.ForeignKeyConstraint(['master_id'], ['masters.id'], name=op.f('fk_master_inputs_master_id_masters'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('master_id', 'frame_id', name=op.f('pk_master_inputs'))
    )
    op.create_table('reductions',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('frame_id', sa.BigInteger(), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('bias_id', sa.BigInteger(), nullable=True),
    sa.Column('bias_version', sa.Integer(), nullable=True),
    sa.Column('dark_id', sa.BigInteger(), nullable=True),
    sa.Column('dark_version', sa.Integer(), nullable=True),
    sa.Column('dark_scaled', sa.Boolean(), server_default='false', nullable=False),
    sa.Column('flat_id', sa.BigInteger(), nullable=True),
    sa.Column('flat_version', sa.Integer(), nullable=True),
    sa.Column('steps', postgresql.ARRAY(sa.Text()), nullable=False),
    sa.Column('missing', postgresql.ARRAY(sa.Text()), server_default='{}', nullable=False),
    sa.Column('sky', sa.Double(), nullable=True),
    sa.Column('sky_rms', sa.Double(), nullable=True),
    sa.Column('n_saturated', sa.Integer(), nullable=True),
    sa.Column('n_cosmic', sa.Integer(), nullable=True),
    sa.Column('obsdb_version', sa.Text(), nullable=False),
    sa.Column('config_hash', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['bias_id'], ['masters.id'], name=op.f('fk_reductions_bias_id_masters')),
    sa.ForeignKeyConstraint(['dark_id'], ['masters.id'], name=op.f('fk_reductions_dark_id_masters')),
    sa.ForeignKeyConstraint(['flat_id'], ['masters.id'], name=op.f('fk_reductions_flat_id_masters')),
    sa.ForeignKeyConstraint(['frame_id'], ['frames.id'], name=op.f('fk_reductions_frame_id_frames'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_reductions')),
    sa.UniqueConstraint('frame_id', name=op.f('uq_reductions_frame_id'))
    )


def _drop_procrastinate() -> None:
    # procrastinate has no uninstall; drop every object its schema created, by name.
    op.execute(
        """
        DO $$
        DECLARE r record;
        BEGIN
          FOR r IN SELECT tablename FROM pg_tables
                   WHERE schemaname = current_schema() AND tablename LIKE 'procrastinate%' LOOP
            EXECUTE format('DROP TABLE IF EXISTS %I CASCADE', r.tablename);
          END LOOP;
          FOR r IN SELECT p.oid::regprocedure AS sig FROM pg_proc p
                   JOIN pg_namespace n ON n.oid = p.pronamespace
                   WHERE n.nspname = current_schema() AND p.proname LIKE 'procrastinate%' LOOP
            EXECUTE format('DROP ROUTINE IF EXISTS %s CASCADE', r.sig);
          END LOOP;
          FOR r IN SELECT t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
                   WHERE n.nspname = current_schema() AND t.typname LIKE 'procrastinate%'
                     AND t.typtype IN ('e', 'c') LOOP
            EXECUTE format('DROP TYPE IF EXISTS %I CASCADE', r.typname);
          END LOOP;
        END $$;
        """
    )


def downgrade() -> None:
    op.drop_table('reductions')
    op.drop_table('master_inputs')
    op.drop_index('ix_masters_selection', table_name='masters')
    op.drop_table('masters')
    op.execute("UPDATE frames SET state = 'ingested' WHERE state IN ('waiting', 'combined', 'unused')")
    op.drop_constraint(op.f("ck_frames_state"), "frames", type_="check")
    op.create_check_constraint(op.f("ck_frames_state"), "frames", f"state IN ({OLD_STATES})")
    _drop_procrastinate()
