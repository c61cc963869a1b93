"""Which database objects Alembic compares with obsdb's models."""


def include_name(name, type_, parent_names) -> bool:
    """procrastinate's job-queue objects come from its own SQL, not from our models."""
    return not (name or "").startswith("procrastinate")
