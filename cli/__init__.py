"""The ``obsdb`` command line (installed as ``obsdb.cli``)."""
