"""obsdb.catalog."""
