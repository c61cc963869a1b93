"""measurements: references to frames and sources checked once per statement

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30

A foreign key is checked by PostgreSQL once per row: an after-trigger runs a locking
query on the referenced table for every measurement. A frame's measurements arrive
as one binary COPY of a thousand rows or more, and those checks cost more than the
COPY itself (measured on PostgreSQL 16: 41k rows/s with the two keys, 103k with the
checks below, 115k with none). So the two keys of ``measurements`` become triggers
that do the same work once per statement, set-based:

- after INSERT (statement, with the inserted rows as a transition table): one
  anti-join finds any row whose frame or source does not exist and raises
  ``foreign_key_violation``, as the key did;
- before UPDATE OF frame_id, source_id (row): refused. A measurement belongs to one
  frame and one source; re-measuring deletes and inserts;
- after DELETE on frames and on sources (statement, with the deleted rows): their
  measurements are deleted, as ``ON DELETE CASCADE`` did.

What a key's row lock did against a concurrent delete is done by a table lock on the
delete side, which is rare (a frame or source is removed only by maintenance or when a
frame is measured again): before cascading, the delete takes ``SHARE ROW EXCLUSIVE``
on ``measurements``, which waits for every transaction that is inserting measurements
to end and keeps new ones out until it ends. The cascade's DELETE then sees what they
committed; an insert that was waiting runs its check after the delete committed and
fails on the missing row. This reasoning needs READ COMMITTED for the writers (a new
snapshot per statement), which is what obsdb's pipeline uses; researchers only read.

The SQL text is frozen in this migration (later changes need a new migration).
"""

from collections.abc import Sequence

from alembic import op

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


UPGRADE_SQL = r"""
ALTER TABLE measurements DROP CONSTRAINT fk_measurements_frame_id_frames;
ALTER TABLE measurements DROP CONSTRAINT fk_measurements_source_id_sources;

CREATE FUNCTION obsdb_measurements_check_references() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    bad record;
BEGIN
    SELECT n.frame_id, n.source_id,
           NOT EXISTS (SELECT 1 FROM frames f WHERE f.id = n.frame_id) AS no_frame
      INTO bad
      FROM obsdb_new_measurements n
     WHERE NOT EXISTS (SELECT 1 FROM frames f WHERE f.id = n.frame_id)
        OR NOT EXISTS (SELECT 1 FROM sources s WHERE s.id = n.source_id)
     LIMIT 1;
    IF FOUND THEN
        IF bad.no_frame THEN
            RAISE EXCEPTION 'insert into measurements: frame_id % is not in frames', bad.frame_id
                USING ERRCODE = 'foreign_key_violation', TABLE = 'measurements', COLUMN = 'frame_id';
        END IF;
        RAISE EXCEPTION 'insert into measurements: source_id % is not in sources', bad.source_id
            USING ERRCODE = 'foreign_key_violation', TABLE = 'measurements', COLUMN = 'source_id';
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER measurements_check_references
    AFTER INSERT ON measurements
    REFERENCING NEW TABLE AS obsdb_new_measurements
    FOR EACH STATEMENT EXECUTE FUNCTION obsdb_measurements_check_references();

CREATE FUNCTION obsdb_measurements_fixed_references() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.frame_id IS DISTINCT FROM OLD.frame_id OR NEW.source_id IS DISTINCT FROM OLD.source_id THEN
        RAISE EXCEPTION 'a measurement''s frame_id and source_id cannot change (measurement %)', OLD.id
            USING ERRCODE = 'foreign_key_violation', TABLE = 'measurements';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER measurements_fixed_references
    BEFORE UPDATE OF frame_id, source_id ON measurements
    FOR EACH ROW EXECUTE FUNCTION obsdb_measurements_fixed_references();

CREATE FUNCTION obsdb_cascade_to_measurements() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM obsdb_deleted_rows) THEN
        RETURN NULL;  -- nothing deleted: no lock, so re-measuring a frame blocks no one
    END IF;
    LOCK TABLE measurements IN SHARE ROW EXCLUSIVE MODE;
    IF TG_TABLE_NAME = 'frames' THEN
        DELETE FROM measurements m USING obsdb_deleted_rows d WHERE m.frame_id = d.id;
    ELSE
        DELETE FROM measurements m USING obsdb_deleted_rows d WHERE m.source_id = d.id;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER frames_cascade_to_measurements
    AFTER DELETE ON frames
    REFERENCING OLD TABLE AS obsdb_deleted_rows
    FOR EACH STATEMENT EXECUTE FUNCTION obsdb_cascade_to_measurements();

CREATE TRIGGER sources_cascade_to_measurements
    AFTER DELETE ON sources
    REFERENCING OLD TABLE AS obsdb_deleted_rows
    FOR EACH STATEMENT EXECUTE FUNCTION obsdb_cascade_to_measurements();

COMMENT ON TRIGGER measurements_check_references ON measurements IS
    'Foreign keys to frames(id) and sources(id), checked once per statement (migration 0006).';
"""

DOWNGRADE_SQL = r"""
DROP TRIGGER sources_cascade_to_measurements ON sources;
DROP TRIGGER frames_cascade_to_measurements ON frames;
DROP TRIGGER measurements_fixed_references ON measurements;
DROP TRIGGER measurements_check_references ON measurements;
DROP FUNCTION obsdb_cascade_to_measurements();
DROP FUNCTION obsdb_measurements_fixed_references();
DROP FUNCTION obsdb_measurements_check_references();
ALTER TABLE measurements ADD CONSTRAINT fk_measurements_frame_id_frames
    FOREIGN KEY (frame_id) REFERENCES frames (id) ON DELETE CASCADE;
ALTER TABLE measurements ADD CONSTRAINT fk_measurements_source_id_sources
    FOREIGN KEY (source_id) REFERENCES sources (id) ON DELETE CASCADE;
"""


def upgrade() -> None:
    op.execute(UPGRADE_SQL)


def downgrade() -> None:
    op.execute(DOWNGRADE_SQL)
