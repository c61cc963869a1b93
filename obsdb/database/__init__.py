"""Connecting to obsdb's PostgreSQL catalog: embedded or a server, schema checks."""

from obsdb.database.engine import connect, database_url
from obsdb.database.schema import SchemaOutOfDate, ensure_schema, upgrade_schema

__all__ = ["SchemaOutOfDate", "connect", "database_url", "ensure_schema", "upgrade_schema"]
