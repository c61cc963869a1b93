"""The migrations are the truth: upgrade, downgrade, and no drift from the models."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from obsdb.database.schema import current_revision, downgrade_schema, ensure_schema, head_revision, upgrade_schema
from obsdb.database import SchemaOutOfDate
from obsdb.models import Base
from obsdb.migrations.env_filters import include_name

import pytest


def test_upgrade_empty_database_to_head_matches_models(empty_db_url):
    engine = create_engine(empty_db_url)
    upgrade_schema(engine)
    assert current_revision(engine) == head_revision()
    with engine.connect() as conn:
        opts = {"compare_type": True, "include_name": include_name}
        diff = compare_metadata(MigrationContext.configure(conn, opts=opts), Base.metadata)
    assert diff == [], f"models drifted from the migrations: {diff}"
    engine.dispose()


def test_downgrade_to_base_and_back(empty_db_url):
    engine = create_engine(empty_db_url)
    upgrade_schema(engine)
    downgrade_schema(engine, "base")
    assert current_revision(engine) is None
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    upgrade_schema(engine)
    assert {"frames", "instruments", "rejected_files"} <= set(inspect(engine).get_table_names())
    engine.dispose()


def test_server_schema_out_of_date_is_refused(empty_db_url):
    engine = create_engine(empty_db_url)
    with pytest.raises(SchemaOutOfDate, match="run `obsdb init`"):
        ensure_schema(engine, auto_upgrade=False)
    ensure_schema(engine, auto_upgrade=True)
    ensure_schema(engine, auto_upgrade=False)
    engine.dispose()
