"""Named, independent random streams.

Every random quantity comes from a generator keyed by (seed, purpose, indices), never
from one shared generator consumed in program order: adding a frame, a star or a new
effect then leaves every other draw unchanged, and a frame can be regenerated alone.
"""

from __future__ import annotations

import numpy as np

# Purposes are fixed small integers: renaming a purpose must not change the data.
CATALOG = 1
CAMERA = 2
FLAT = 3
WEATHER = 4
SCHEDULE = 5
POINTING = 6
PIXELS = 7
COSMICS = 8
REFCAT = 9
VARIABLES = 10
DUST = 11


def stream(seed: int, purpose: int, *indices: int) -> np.random.Generator:
    """Generator for one purpose, deterministic in ``seed`` and ``indices``.

    Parameters
    ----------
    seed : int
        The run seed (``SimulationConfig.seed``).
    purpose : int
        One of the module constants (``PIXELS``, ``WEATHER``...).
    *indices : int
        Further keys, such as the night index and the frame index within the night.

    Returns
    -------
    numpy.random.Generator
    """
    return np.random.default_rng([int(seed), int(purpose), *(int(i) for i in indices)])
