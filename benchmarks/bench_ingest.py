"""Ingest throughput: obsdb's header-only ingest beside a full-read, row-by-row baseline.

    python benchmarks/bench_ingest.py [--n 1000] [--size 1024]

Writes N distinct simulated frames (light frames of a simulated night, each copy with its
own DATE-OBS so every file has its own content), then ingests them into fresh databases
twice: with obsdb's Ingestor (reads headers only, hashes, one transaction per file), and
with the way seed-style pipelines do it (astropy opens each file and loads its pixels,
then one ORM object is added and committed per file). Uses OBSDB_DATABASE_URL when set,
otherwise an embedded PostgreSQL.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from astropy.io import fits
from sqlalchemy.orm import sessionmaker

from benchmarks.common import Row, print_table, scratch_database, timed
from obsdb.config import Settings
from obsdb.ingest import Ingestor
from obsdb.models import Frame, Instrument
from obsdb.simulate import SimulationConfig, simulate


def make_frames(folder: Path, n: int, size: int) -> list[Path]:
    sim = folder / "sim"
    simulate(sim, SimulationConfig(seed=7, size=size))
    lights = sorted(p for p in (sim / "raw").rglob("*.fits") if fits.getval(p, "IMAGETYP") == "Light Frame")
    out = folder / "frames"
    out.mkdir()
    paths = []
    start = datetime(2025, 1, 1, tzinfo=UTC)
    for i, src in zip(range(n), itertools.cycle(lights)):
        with fits.open(src) as hdul:
            hdul[0].header["DATE-OBS"] = (start + timedelta(seconds=90 * i)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
            target = out / f"frame-{i:05d}.fits"
            hdul.writeto(target)
        paths.append(target)
    return paths


def baseline_ingest(paths: list[Path], factory: sessionmaker) -> None:
    with factory() as session:
        instrument = Instrument(name="bench", profile="generic")
        session.add(instrument)
        session.commit()
        for path in paths:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            with fits.open(path) as hdul:
                data = hdul[0].data  # the full read: pixels decoded and scaled
                header = hdul[0].header
                session.add(Frame(
                    instrument_id=instrument.id, path=str(path), sha256=digest,
                    size_bytes=path.stat().st_size,
                    file_mtime=datetime.fromtimestamp(path.stat().st_mtime, UTC),
                    header={k: str(v) for k, v in header.items() if k not in ("COMMENT", "HISTORY")},
                    imagetyp="light", filter=header.get("FILTER"), exptime=header.get("EXPTIME"),
                    naxis1=data.shape[1], naxis2=data.shape[0],
                ))
                session.commit()


QUICK = ["--n", "300", "--size", "512"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--size", type=int, default=1024)
    return parser


def measure(args: argparse.Namespace) -> tuple[str, list[Row]]:
    """Write the frames, ingest them both ways; the table's title and rows."""
    with tempfile.TemporaryDirectory(prefix="obsdb-bench-ingest-") as tmp:
        paths = make_frames(Path(tmp), args.n, args.size)
        with scratch_database() as engine:
            factory = sessionmaker(engine, expire_on_commit=False)
            settings = Settings(home=Path(tmp) / "home", database_url=engine.url.render_as_string(hide_password=False))
            with timed() as t_obsdb:
                report = Ingestor(factory, settings).ingest(paths)
            assert report.counts() == {"new": len(paths)}, report.counts()
            with timed() as t_rescan:
                again = Ingestor(factory, settings).ingest(paths)
            assert again.counts() == {"unchanged": len(paths)}
        with scratch_database() as engine:
            with timed() as t_base:
                baseline_ingest(paths, sessionmaker(engine, expire_on_commit=False))
    n = len(paths)
    return (
        f"ingest of {n} simulated {args.size}x{args.size} frames",
        [
            Row("ingest, header-only vs full read", n / t_obsdb[0], n / t_base[0], "files/s"),
            Row("rescan of ingested files", n / t_rescan[0], None, "files/s"),
        ],
    )


def run(quick: bool = False) -> list[Row]:
    """The rows of ``python -m benchmarks`` (``QUICK``'s sizes with ``quick``)."""
    return measure(_parser().parse_args(QUICK if quick else []))[1]


def main(argv: list[str] | None = None) -> None:
    print_table(*measure(_parser().parse_args(argv)))


if __name__ == "__main__":
    main()
