"""rejected_files: one row per file (path and content), not per content

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30

Rejections were unique by content, so two bad files with the same bytes (two empty
files, a corrupt file copied twice) shared one row and the second path was nowhere on
record. Now a row is a path with its content: the same file tried again is one row with
more attempts, and each bad file is listed. The quarantine keeps one copy per content.
The unique index on (path, sha256) also serves lookups by path, which had an index of
their own.
"""

from collections.abc import Sequence

from alembic import op

revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_constraint('uq_rejected_files_sha256', 'rejected_files', type_='unique')
    op.drop_index('ix_rejected_files_path', table_name='rejected_files')
    op.create_index('uq_rejected_files_path_sha256', 'rejected_files', ['path', 'sha256'], unique=True)


def downgrade() -> None:
    op.drop_index('uq_rejected_files_path_sha256', table_name='rejected_files')
    # Keep the newest row of each content, as the old constraint allows one.
    op.execute("DELETE FROM rejected_files r USING rejected_files n "
               "WHERE r.sha256 = n.sha256 AND (r.last_seen, r.id) < (n.last_seen, n.id)")
    op.create_index('ix_rejected_files_path', 'rejected_files', ['path'], unique=False)
    op.create_unique_constraint('uq_rejected_files_sha256', 'rejected_files', ['sha256'])
