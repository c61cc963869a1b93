"""obsdb.photometry."""
