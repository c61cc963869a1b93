"""Alembic migrations of the obsdb schema, installed as ``obsdb.migrations``."""
