"""obsdb.astrometry."""
