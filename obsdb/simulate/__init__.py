"""Night simulator: raw FITS frames as a real camera writes them, with their truth.

``simulate(outdir, SimulationConfig(...))`` writes ``raw/<night>/*.fits`` (MaxIm DL
style), ``refcat.csv`` (the reference catalog) and ``truth/`` (everything true about
the camera, the sky and each frame); :class:`Truth` reads the truth back and rebuilds
noise-free images, true magnitudes at any time and true WCS.
"""

from obsdb.simulate.config import SimulationConfig
from obsdb.simulate.night import SimulationSummary, simulate
from obsdb.simulate.truth import Truth

__all__ = ["SimulationConfig", "SimulationSummary", "Truth", "simulate"]
