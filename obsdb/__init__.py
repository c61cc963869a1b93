"""obsdb: an observatory data system.

Frames flow one way: file -> frame row -> master/calibrated image -> detections ->
measurements -> zero points/ensemble -> light curve, every stage recorded in PostgreSQL.
"""

__version__ = "0.1.0"
