"""What is true about a simulated run, and how to read it back.

Layout of ``OUTDIR/truth/`` (nothing in it is FITS, so an ingest of OUTDIR never takes
it for frames)::

    camera.json          gain, read noise, bias level, dark current, full well,
                         zero points, extinction and colour terms, catalog offsets,
                         seed, site, fields, nights and the whole configuration
    stars.csv            every star: id, field, ra, dec, reference g and r, variability
                         (see obsdb.simulate.variability for the parameters)
    frames.csv           one row per raw frame (see obsdb.simulate.records.FrameRecord)
    bias.npz             'bias': true 2-D bias in ADU (float32)
    dark_rate.npz        'dark_rate': dark current in e-/s per pixel, hot pixels included
    <night>/flat_<band>.npz   'flat': true flat of that filter that night (median 1)
    <night>/cosmics.npz  one boolean mask per exposed frame, keyed by file stem
    <night>/weather.json sunset, nautical twilight, sunrise, cloud episodes (centre MJD,
                         full duration in days, peak extinction in mag), field windows

Noise-free images are not stored (they would not stay small): :meth:`Truth.noise_free_image`
rebuilds them exactly from the tables.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from obsdb.simulate import astrometry, scene
from obsdb.simulate.records import FrameRecord, read_frames_csv
from obsdb.simulate.sky import StarTable

README = __doc__


class NpzAppender:
    """Write arrays one at a time into a compressed ``.npz`` (readable by ``numpy.load``).

    ``numpy.savez_compressed`` needs every array at once; a night's cosmic-ray masks
    would then all sit in memory together.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._zip = zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED)

    def add(self, name: str, array: np.ndarray) -> None:
        with self._zip.open(name + ".npy", "w", force_zip64=True) as fh:
            np.lib.format.write_array(fh, np.asanyarray(array), allow_pickle=False)

    def close(self) -> None:
        self._zip.close()

    def __enter__(self) -> NpzAppender:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Truth:
    """Read access to the truth of a simulated run.

    Frames are named by their path relative to the output directory
    (``raw/2025-10-14/FIELD1-g-0001.fits``); a bare file name, a stem or an absolute
    path to the file work too when unambiguous.

    Examples
    --------
    >>> truth = Truth.load(outdir)                         # doctest: +SKIP
    >>> truth.true_mag(17, "g", [60963.1, 60963.2])        # doctest: +SKIP
    >>> calibrated_ideal = truth.noise_free_image("FIELD1-g-0001")  # doctest: +SKIP
    """

    def __init__(self, outdir: Path, camera: dict, stars: StarTable,
                 frames: list[FrameRecord]) -> None:
        self.outdir = Path(outdir)
        self.camera = camera
        self.stars = stars
        self.frames = frames
        self._by_file = {f.file: f for f in frames}
        self._cache: dict = {}

    # -- loading ------------------------------------------------------------------------

    @classmethod
    def load(cls, outdir) -> Truth:
        """Read ``OUTDIR/truth``."""
        outdir = Path(outdir)
        tdir = outdir / "truth"
        if not (tdir / "camera.json").exists():
            raise FileNotFoundError(f"{tdir} holds no simulation truth (camera.json missing)")
        camera = json.loads((tdir / "camera.json").read_text())
        stars = StarTable.read_csv(tdir / "stars.csv")
        frames = read_frames_csv(tdir / "frames.csv")
        return cls(outdir, camera, stars, frames)

    @property
    def size(self) -> int:
        return int(self.camera["size"])

    @property
    def nights(self) -> list[str]:
        return list(self.camera["nights"])

    @property
    def gain(self) -> float:
        return float(self.camera["gain_e_per_adu"])

    @property
    def read_noise_e(self) -> float:
        return float(self.camera["read_noise_e"])

    # -- frames -------------------------------------------------------------------------

    def frame(self, name) -> FrameRecord:
        """Truth record of a frame (path relative to OUTDIR, file name, stem or path)."""
        if isinstance(name, FrameRecord):
            return name
        key = str(name)
        if key in self._by_file:
            return self._by_file[key]
        p = Path(key)
        if p.is_absolute():
            try:
                rel = p.resolve().relative_to(self.outdir.resolve()).as_posix()
            except ValueError:
                rel = None
            if rel in self._by_file:
                return self._by_file[rel]
        hits = [f for f in self.frames if Path(f.file).name == p.name or f.name == key]
        if len(hits) == 1:
            return hits[0]
        if not hits:
            raise KeyError(f"no frame {key!r} in the truth")
        raise KeyError(f"{key!r} is ambiguous ({len(hits)} nights); give the path "
                       "relative to the output directory")

    def select(self, kind=None, band=None, field=None, night=None) -> list[FrameRecord]:
        """Frames matching every given attribute, in time order."""
        out = [f for f in self.frames
               if (kind is None or f.kind == kind) and (band is None or f.band == band)
               and (field is None or f.field == field) and (night is None or f.night == night)]
        return sorted(out, key=lambda f: f.mjd_start)

    # -- stars --------------------------------------------------------------------------

    def true_mag(self, star_id, band: str, mjd) -> np.ndarray:
        """True magnitude of star(s) at time(s) ``mjd`` (MJD UTC).

        ``star_id`` and ``mjd`` broadcast: one id and many times gives a light curve,
        many ids and one time a snapshot, equal-length arrays one value per pair.
        """
        if band not in ("g", "r"):
            raise ValueError(f"band must be 'g' or 'r', got {band!r}")
        ids = np.asarray(star_id)
        mjd = np.asarray(mjd, dtype=float)
        rows = self.stars.index_of(ids.ravel()).reshape(ids.shape)
        rows_b, mjd_b = np.broadcast_arrays(rows, mjd)
        sub = self.stars.select(rows_b.ravel())
        return sub.true_mag(band, mjd_b.ravel()).reshape(rows_b.shape)

    def refcat(self):
        """The reference catalog as written (``refcat.csv``), an astropy Table."""
        from astropy.table import Table

        return Table.read(self.outdir / "refcat.csv", format="ascii.csv")

    def star(self, star_id) -> dict:
        """All truth columns of one star as a dict."""
        i = int(self.stars.index_of(star_id)[0])
        return {k: v[i].item() if hasattr(v[i], "item") else v[i]
                for k, v in self.stars.columns.items()}

    def variables(self, field=None) -> StarTable:
        """Stars that are not constant (optionally of one field)."""
        m = self.stars["var_type"] != "constant"
        if field is not None:
            m &= self.stars["field"] == field
        return self.stars.select(m)

    def star_fluxes(self, frame):
        """True positions and fluxes of a light's stars (see :func:`scene.star_fluxes`).

        Returns
        -------
        dict
            ``id``, ``x``, ``y`` (0-based pixels, true WCS), ``flux`` (total ADU in the
            calibrated frame), ``mag`` (true, this band, mid-exposure), ``g_r`` (true
            colour at mid-exposure).
        """
        rec = self.frame(frame)
        rows, x, y, flux = scene.star_fluxes(rec, self.stars)
        sub = self.stars.select(rows)
        g = sub.true_mag("g", rec.mjd_mid)
        r = sub.true_mag("r", rec.mjd_mid)
        return {"id": sub["id"], "x": x, "y": y, "flux": flux,
                "mag": g if rec.band == "g" else r, "g_r": g - r}

    # -- astrometry ---------------------------------------------------------------------

    def true_wcs(self, frame):
        """astropy WCS the frame's pixels were truly rendered with (lights only)."""
        rec = self.frame(frame)
        if not rec.true_wcs:
            raise ValueError(f"{rec.file} is a {rec.kind} frame and has no WCS")
        return astrometry.wcs_from_dict(rec.wcs_dict)

    # -- camera arrays ------------------------------------------------------------------

    def _npz(self, relpath: str, key: str) -> np.ndarray:
        ck = (relpath, key)
        if ck not in self._cache:
            with np.load(self.outdir / "truth" / relpath) as z:
                self._cache[ck] = z[key]
        return self._cache[ck]

    def bias(self) -> np.ndarray:
        """True bias (ADU, float32): level, column pattern and row ramp."""
        return self._npz("bias.npz", "bias")

    def dark_rate(self) -> np.ndarray:
        """True dark current (e-/s per pixel, float32), hot pixels included."""
        return self._npz("dark_rate.npz", "dark_rate")

    def dark_adu(self, exptime: float) -> np.ndarray:
        """Mean dark signal in ADU for an exposure of ``exptime`` seconds."""
        return self.dark_rate().astype(float) * (exptime / self.gain)

    def flat(self, band: str, night: str | None = None) -> np.ndarray:
        """True flat of ``band`` (median 1) on ``night`` (the first night by default)."""
        night = night or self.nights[0]
        return self._npz(f"{night}/flat_{band}.npz", "flat")

    def cosmic_mask(self, frame) -> np.ndarray:
        """Boolean mask of the pixels cosmic rays hit in a frame."""
        rec = self.frame(frame)
        path = self.outdir / "truth" / rec.night / "cosmics.npz"
        with np.load(path) as z:
            if rec.name in z.files:
                return z[rec.name]
        return np.zeros((self.size, self.size), dtype=bool)

    # -- images -------------------------------------------------------------------------

    def noise_free_image(self, frame) -> np.ndarray:
        """Sky plus stars in ADU before the flat field (float64).

        This is what a perfectly calibrated frame ``(raw - bias - dark) / flat`` shows
        without noise, cosmic rays or saturation. Zeros for bias and darks, the uniform
        twilight level for flats.
        """
        return scene.noise_free_image(self.frame(frame), self.stars, self.size)

    def expected_raw(self, frame) -> np.ndarray:
        """Mean raw ADU per pixel (before noise, cosmic rays, quantisation, clipping)."""
        rec = self.frame(frame)
        img = self.noise_free_image(rec)
        if rec.kind in ("flat", "light"):
            img = img * self.flat(rec.band, rec.night)
        return img + self.bias() + self.dark_adu(rec.exptime)

    def variance_calibrated(self, frame) -> np.ndarray:
        """Variance (ADU^2) of each pixel of the frame calibrated with the true bias,
        dark and flat: Poisson (signal and dark), read noise and quantisation, divided
        by the flat squared."""
        rec = self.frame(frame)
        flat = self.flat(rec.band, rec.night) if rec.kind in ("flat", "light") else 1.0
        e = self.noise_free_image(rec) * flat * self.gain + self.dark_rate() * rec.exptime
        var = e / self.gain**2 + (self.read_noise_e / self.gain) ** 2 + 1.0 / 12.0
        return var / np.asarray(flat, dtype=float) ** 2

    def calibrate(self, data: np.ndarray, frame) -> np.ndarray:
        """Calibrate raw pixels with the *true* bias, dark and flat (a reference result)."""
        rec = self.frame(frame)
        out = np.asarray(data, dtype=float) - self.bias() - self.dark_adu(rec.exptime)
        if rec.kind in ("flat", "light"):
            out = out / self.flat(rec.band, rec.night)
        return out

    def zero_point(self, frame) -> float:
        """True zero point of a light (see :class:`FrameRecord`)."""
        return self.frame(frame).true_zero_point
