"""Where obsdb keeps things and how it is tuned.

Settings come from three places, later ones winning: built-in defaults, an optional TOML
file (``OBSDB_CONFIG`` or ``--config``), and environment variables (``OBSDB_HOME``,
``OBSDB_DATABASE_URL``). Everything obsdb writes lives under directories named here.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_HOME = Path("~/.local/share/obsdb")


class ConfigError(ValueError):
    """The configuration file is missing, unreadable or has a bad value."""


@dataclass(frozen=True)
class WatchSettings:
    """How the watcher decides a file is complete and how often it rescans."""

    settle_seconds: float = 2.0
    rescan_seconds: float = 60.0
    polling: bool = False
    poll_interval: float = 1.0
    # A settled file still incomplete after this long is ingested anyway (and recorded as
    # truncated); None means max(10 * settle_seconds, 60).
    give_up_seconds: float | None = None


@dataclass(frozen=True)
class CalibrationSettings:
    """How masters are built and chosen, and how light frames are reduced."""

    # A calibration group is complete when no new member arrived for this long.
    quiet_seconds: float = 300.0
    # A light frame with a master missing waits this long for calibrations, then is
    # reduced with what exists (some observers never take calibrations).
    grace_seconds: float = 3600.0
    # Masters are valid this many days either side of their night.
    bias_validity_days: float = 60.0
    dark_validity_days: float = 60.0
    flat_validity_days: float = 30.0
    # A master and a frame must agree on CCD temperature within this (when both know it).
    temperature_tolerance: float = 2.0
    # Flats outside these levels (ADU, after bias) are not combined; None: 80 % of saturation.
    flat_min_level: float = 1000.0
    flat_max_level: float | None = None
    # Used when neither the header nor the profile gives them.
    default_gain: float = 1.0
    default_read_noise: float = 10.0
    # Reduction steps, in order (BANZAI style: the list lives in configuration).
    steps: tuple[str, ...] = ("saturation", "overscan", "trim", "bias", "dark", "flat", "cosmics")
    # Job retries before a frame is marked failed, and the first back-off.
    max_attempts: int = 3
    retry_wait_seconds: float = 10.0


# Filter names as filter wheels spell them, mapped onto catalog bands. A profile's or the
# config's [photometry.filter_bands] extends and overrides these.
DEFAULT_FILTER_BANDS = {
    "u": "u", "u'": "u", "sloan u": "u", "sloan u'": "u", "sdss u": "u",
    "g": "g", "g'": "g", "sloan g": "g", "sloan g'": "g", "sdss g": "g", "gp": "g",
    "r": "r", "r'": "r", "sloan r": "r", "sloan r'": "r", "sdss r": "r", "rp": "r",
    "i": "i", "i'": "i", "sloan i": "i", "sloan i'": "i", "sdss i": "i", "ip": "i",
    "z": "z", "z'": "z", "sloan z": "z", "sloan z'": "z", "sdss z": "z", "zs": "z",
    "b": "B", "johnson b": "B", "v": "V", "johnson v": "V", "rc": "R", "cousins r": "R",
    "ic": "I", "cousins i": "I",
}
# The colour used for the colour term of each band (bluer minus redder neighbour).
DEFAULT_BAND_COLOURS = {
    "u": "u-g", "g": "g-r", "r": "g-r", "i": "r-i", "z": "i-z",
    "B": "B-V", "V": "B-V", "R": "V-R", "I": "R-I",
}


@dataclass(frozen=True)
class PhotometrySettings:
    """Star detection, astrometry, aperture photometry and magnitude calibration."""

    # Reference catalog to calibrate against (`obsdb refcat load --name`); None: the one
    # catalog loaded (or none at all: magnitudes are relative, flag 512).
    refcat: str | None = None
    filter_bands: dict[str, str] = field(default_factory=dict)
    band_colours: dict[str, str] = field(default_factory=dict)
    # Detection threshold in sigma of the local sky noise, and the least connected pixels.
    detect_threshold: float = 3.0
    detect_min_area: int = 5
    # Aperture radii as multiples of the frame's FWHM, plus fixed radii in pixels.
    aperture_fwhm_factors: tuple[float, ...] = (1.0, 1.5, 2.0, 3.0)
    aperture_fixed_radii: tuple[float, ...] = ()
    # Which aperture is reported: "auto" (curve of growth) or a radius in pixels.
    aperture: str | float = "auto"
    # Scintillation (Young 1967) coefficient and the Osborn et al. (2015) correction; the
    # telescope aperture comes from APTDIA or this (metres).
    scintillation_coefficient: float = 0.09
    scintillation_correction: float = 1.5
    telescope_diameter_m: float | None = None
    # Astrometry: how far (pixels) the header WCS may be off, least matches, SIP degree.
    search_radius_px: float = 60.0
    min_astrometric_matches: int = 6
    sip_degree: int = 2
    # Frames without WCS are aligned to a solved frame of the same field within this
    # distance of their pointing (degrees).
    same_field_deg: float = 0.5
    # Zero points: calibrators need this S/N; a frame needs this many of them.
    zp_min_snr: float = 20.0
    zp_min_stars: int = 5
    fit_colour_term: bool = True
    # Ensemble photometry.
    ensemble_clip_sigma: float = 4.0
    ensemble_min_frames: int = 3

    def band_of(self, filter_name: str | None) -> str | None:
        """The catalog band of an instrument filter, or None when unknown."""
        if not filter_name:
            return None
        bands = {**DEFAULT_FILTER_BANDS, **{k.lower(): v for k, v in self.filter_bands.items()}}
        return bands.get(filter_name.strip().lower())

    def colour_of(self, band: str | None) -> str | None:
        if band is None:
            return None
        return {**DEFAULT_BAND_COLOURS, **self.band_colours}.get(band)


@dataclass(frozen=True)
class QueueSettings:
    """The job queue's liveness: how fast a killed worker's job is given to another."""

    heartbeat_seconds: float = 10.0
    stalled_seconds: float = 60.0
    # Succeeded jobs are deleted this long after they ended (failed ones are kept for a
    # person to read): the queue table stays small over years. 0 keeps them all.
    keep_finished_days: float = 30.0


@dataclass(frozen=True)
class Site:
    """The observatory; used for the observing night and (later) airmass and BJD."""

    name: str | None = None
    lat: float | None = None
    lon: float | None = None  # degrees, east positive
    height: float | None = None  # metres


@dataclass(frozen=True)
class Settings:
    """Resolved configuration of one obsdb process."""

    home: Path
    database_url: str | None = None
    config_path: Path | None = None
    site: Site = field(default_factory=Site)
    watch: WatchSettings = field(default_factory=WatchSettings)
    calibration: CalibrationSettings = field(default_factory=CalibrationSettings)
    queue: QueueSettings = field(default_factory=QueueSettings)
    photometry: PhotometrySettings = field(default_factory=PhotometrySettings)
    instruments: dict[str, dict[str, Any]] = field(default_factory=dict)
    pipeline: dict[str, Any] = field(default_factory=dict)

    @property
    def embedded(self) -> bool:
        """True when obsdb runs its own PostgreSQL under ``home``."""
        return self.database_url is None

    @property
    def pgdata(self) -> Path:
        return self.home / "pgdata"

    @property
    def products_dir(self) -> Path:
        return self.home / "products"

    @property
    def quarantine_dir(self) -> Path:
        return self.home / "quarantine"


def _section(data: dict[str, Any], name: str) -> dict[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{name}] in the config file must be a table")
    return value


def _build(cls: type, values: dict[str, Any], section: str) -> Any:
    known = set(cls.__dataclass_fields__)
    unknown = set(values) - known
    if unknown:
        raise ConfigError(
            f"unknown setting(s) in [{section}]: {', '.join(sorted(unknown))}; "
            f"known: {', '.join(sorted(known))}"
        )
    try:
        return cls(**values)
    except TypeError as exc:  # pragma: no cover - dataclass signature errors
        raise ConfigError(f"[{section}]: {exc}") from exc


def _calibration_values(values: dict[str, Any]) -> dict[str, Any]:
    if "steps" in values:
        values = {**values, "steps": tuple(values["steps"])}
    return values


def _photometry_values(values: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}


def load_settings(config_path: str | os.PathLike[str] | None = None) -> Settings:
    """Read the environment and the optional TOML file into :class:`Settings`.

    Parameters
    ----------
    config_path
        A TOML file; when None, ``OBSDB_CONFIG`` is used if set.
    """
    path_text = config_path if config_path is not None else os.environ.get("OBSDB_CONFIG")
    data: dict[str, Any] = {}
    path: Path | None = None
    if path_text:
        path = Path(path_text).expanduser()
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc

    home_text = os.environ.get("OBSDB_HOME") or data.get("home") or str(DEFAULT_HOME)
    home = Path(home_text).expanduser().resolve()
    database_url = os.environ.get("OBSDB_DATABASE_URL") or data.get("database_url") or None

    instruments = _section(data, "instruments")
    for name, profile in instruments.items():
        if not isinstance(profile, dict):
            raise ConfigError(f"[instruments.{name}] must be a table")

    return Settings(
        home=home,
        database_url=database_url,
        config_path=path,
        site=_build(Site, _section(data, "site"), "site"),
        watch=_build(WatchSettings, _section(data, "watch"), "watch"),
        calibration=_build(CalibrationSettings, _calibration_values(_section(data, "calibration")), "calibration"),
        queue=_build(QueueSettings, _section(data, "queue"), "queue"),
        photometry=_build(PhotometrySettings, _photometry_values(_section(data, "photometry")), "photometry"),
        instruments=instruments,
        pipeline=_section(data, "pipeline"),
    )
