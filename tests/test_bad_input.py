"""Bad input dropped into the folder a running ``obsdb daemon`` watches.

What an observatory expects of each kind of file:

- **Not a frame at all** (empty, truncated, not FITS under a FITS name, FITS with no
  image, a 3-D cube, a symbolic link in a loop): recorded in ``rejected_files`` with its
  kind and reason, a copy kept in the quarantine (when there are bytes to copy), the
  original left untouched, and never a frame.
- **A frame with something wrong inside** is kept (the pixels may be all there is of that
  night) and the trouble is written on it:
  - absurd header values (EXPTIME negative or ``'abc'``, DATE-OBS in 1900) are read as
    unknown, with a warning on the frame saying which card and why. A light without a
    usable exposure time still gets bias and flat, but cannot have a dark scaled to it:
    its reduction fails with that reason; one without a usable date is reduced and
    measured, its measurements carrying no time (never a point in 1900);
  - an image of NaN is ingested (its header is fine) and reduced, then marked failed
    with the reason, once: it does not wait for a WCS that could not help it;
  - a header of 10,000 cards is just a frame: ingested and measured.
- A symbolic link looping back to the watched folder neither traps the rescan nor the
  file-system watcher.
- Through all of it, the daemon keeps running and goes on with the good frames.

Unreadable permissions are a separate test: root reads any file whatever its mode, so as
root that daemon runs under ``capsh`` without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH
(and the test is skipped if there is no capsh).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from sqlalchemy import create_engine, text

from faultkit import (
    Procs,
    deliver,
    load_refcat,
    queue_snapshot,
    sha256,
    simulated_night,
    wait_for_night,
    wait_until,
    write_config,
)

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def night(tmp_path_factory: pytest.TempPathFactory):
    return simulated_night(tmp_path_factory.getbasetemp() / "fault-night-20", lights_per_filter=20)


@pytest.fixture
def procs(tmp_path: Path, cli_env: dict[str, str]):
    config = write_config(tmp_path / "obsdb.toml", quiet=1, grace=0, settle=0.3, rescan=2, give_up=2,
                          max_attempts=2, retry_wait=0.3)
    started = Procs(tmp_path, {**cli_env, "OBSDB_CONFIG": str(config)})
    yield started
    started.kill_all()


def _variant(template: Path, target: Path, data=None, **cards) -> Path:
    """The template frame with some header cards changed (and, optionally, other pixels)."""
    with fits.open(template) as hdul:
        header = hdul[0].header.copy()
        image = hdul[0].data if data is None else data
    for key, value in cards.items():
        header[key.replace("_", "-")] = value
    if data is not None:
        for key in ("BZERO", "BSCALE"):
            header.remove(key, ignore_missing=True)
    fits.PrimaryHDU(image, header).writeto(target)
    return target


def _make_bad_files(template: Path, staging: Path) -> dict[str, Path]:
    staging.mkdir(parents=True)
    whole = template.read_bytes()
    files = {
        "not_fits": staging / "observing-log.fits",
        "no_image": staging / "header-only.fits",
        "table_only": staging / "table-only.fits",
        "cube": staging / "cube.fits",
        "nan": staging / "nan-image.fits",
        "negative_exptime": staging / "negative-exptime.fits",
        "exptime_abc": staging / "exptime-abc.fits",
        "year_1900": staging / "year-1900.fits",
        "big_header": staging / "big-header.fits",
    }
    files["not_fits"].write_text("2025-10-14 20:01 dome open, seeing 2.1\n" * 40)
    fits.PrimaryHDU(header=fits.getheader(template)).writeto(files["no_image"])
    table = fits.BinTableHDU.from_columns([fits.Column(name="flux", format="E", array=np.arange(5.0))])
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(files["table_only"])
    fits.PrimaryHDU(np.zeros((3, 64, 64), np.float32)).writeto(files["cube"])
    _variant(template, files["nan"], data=np.full((256, 256), np.nan, np.float32), DATE_OBS="2025-10-15T03:00:01.500")
    _variant(template, files["negative_exptime"], EXPTIME=-5.0, EXPOSURE=-5.0, DATE_OBS="2025-10-15T03:00:02.500")
    _variant(template, files["exptime_abc"], EXPTIME="abc", EXPOSURE="abc", DATE_OBS="2025-10-15T03:00:03.500")
    _variant(template, files["year_1900"], DATE_OBS="1900-01-01T03:00:04", JD=2415020.5 + 3 / 24)
    with fits.open(template) as hdul:
        header = hdul[0].header.copy()
        image = hdul[0].data
    header["DATE-OBS"] = "2025-10-15T03:00:05.500"
    for i in range(10_000):
        header.append((f"X{i:07d}", i, "filler card"), end=True)
    fits.PrimaryHDU(image, header).writeto(files["big_header"])
    assert len(fits.getheader(files["big_header"])) > 10_000
    # these two are copied in place into the watched folder, as by a writer that died:
    # the watcher must not wait for them for ever, taking them for files being written
    files["empty"] = staging / "empty.fits"
    files["empty"].write_bytes(b"")
    files["truncated"] = staging / "cut-short.fits"
    files["truncated"].write_bytes(whole[: 2880 * 3 + 1000])
    return files


REJECTED = {
    "empty": ("empty", "the file is empty"),
    "truncated": ("truncated", "needs 131072 data bytes but the file ends after"),
    "not_fits": ("not_fits", "not a FITS file"),
    "no_image": ("no_image", "no 2-D image in any of the 1 HDU(s)"),
    "table_only": ("no_image", "BINTABLE"),
    "cube": ("cube", "3-D data cube"),
}
KEPT = ("nan", "negative_exptime", "exptime_abc", "year_1900", "big_header")


@pytest.mark.timeout(240)
def test_bad_files_are_recorded_and_quarantined_and_the_daemon_goes_on(night, tmp_path, db_url, obsdb_home,
                                                                        procs: Procs):
    load_refcat(db_url, night)
    incoming = tmp_path / "incoming"
    (incoming / "sub").mkdir(parents=True)
    # a symbolic-link loop in the watched tree (a folder linking back up to its parent),
    # and two file names linking to each other
    os.symlink("..", incoming / "sub" / "up")
    os.symlink("loop-b.fits", incoming / "loop-a.fits")
    os.symlink("loop-a.fits", incoming / "loop-b.fits")
    good_lights = night.lights[:4]
    bad = _make_bad_files(night.lights[0], tmp_path / "staging")
    originals = {name: sha256(path) for name, path in bad.items()}

    daemon = procs.start("daemon", "-v", "daemon", incoming)
    wait_until(lambda: "watching" in daemon.output() and "Starting worker" in daemon.output(), "the daemon",
               timeout=60, procs=procs)
    deliver([(src, incoming / src.name) for src in night.calibrations + good_lights[:2]])
    for name, path in bad.items():
        if name in ("empty", "truncated"):
            shutil.copyfile(path, incoming / path.name)  # in place, as a writer that died
        else:
            deliver([(path, incoming / path.name)])
    links = [str(incoming / "loop-a.fits"), str(incoming / "loop-b.fits")]
    engine = create_engine(db_url)

    def rejected() -> dict[str, tuple]:
        with engine.connect() as c:
            return {r.path: r for r in c.execute(text(
                "SELECT path, sha256, kind, reason, quarantine_path, attempts FROM rejected_files"))}

    expected_rejects = {str(incoming / bad[n].name) for n in REJECTED} | set(links)
    wait_until(lambda: expected_rejects <= set(rejected()), "every bad file to be recorded", timeout=60,
               procs=procs, detail=lambda: f"rejected so far: {sorted(rejected())}")

    # the daemon goes on: two more good lights after the bad files
    deliver([(src, incoming / src.name) for src in good_lights[2:]])

    def settled():
        with engine.connect() as c:
            states = dict(c.execute(text(
                "SELECT path, state FROM frames WHERE superseded_at IS NULL AND imagetyp = 'light'")).all())
            active = c.execute(text("SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')"
                                    )).scalar()
        want = {str(incoming / p.name) for p in good_lights} | {str(incoming / bad[n].name) for n in KEPT}
        final = all(states.get(p) in ("measured", "failed") for p in want)
        return states if final and active == 0 else None

    wait_until(settled, "every frame to reach a final state", timeout=150, procs=procs,
                        detail=lambda: queue_snapshot(db_url), interval=0.5)
    assert daemon.alive()

    # -- rejected: the kind, the reason, the copy in the quarantine, the original untouched
    records = rejected()
    for name, (kind, words) in REJECTED.items():
        path = incoming / bad[name].name
        row = records[str(path)]
        assert row.kind == kind and words in row.reason, (name, row)
        assert row.sha256 == originals[name]
        assert row.quarantine_path and Path(row.quarantine_path).is_file(), (name, row)
        assert Path(row.quarantine_path).is_relative_to(obsdb_home / "quarantine")
        assert sha256(Path(row.quarantine_path)) == originals[name]
        assert sha256(path) == originals[name]  # never modified, never moved
        assert row.attempts == 1  # recorded once, not again on every rescan
    for link in links:
        row = records[link]
        assert row.kind == "unreadable" and "Too many levels of symbolic links" in row.reason, row
        assert row.quarantine_path is None and row.sha256 is None  # nothing to copy
        assert row.attempts == 1
    assert len(records) == len(REJECTED) + len(links)  # the folder link itself is no file

    # -- kept: frames with their warnings, each in a final state with its reason
    with engine.connect() as c:
        frames = {Path(r.path).name: r for r in c.execute(text(
            "SELECT id, path, state, state_reason, warnings, exptime, date_obs, mjd_mid, tries, "
            "(SELECT count(*) FROM jsonb_object_keys(header)) AS n_cards FROM frames WHERE imagetyp = 'light'"))}
        meas = {r.frame_id: r for r in c.execute(text(
            "SELECT frame_id, count(*) AS n, count(bjd_tdb) AS n_bjd, count(mjd) FILTER (WHERE mjd = mjd) AS n_mjd "
            "FROM measurements GROUP BY frame_id"))}
        nan_measure_runs = c.execute(text(
            "SELECT count(*) FROM procrastinate_jobs WHERE task_name = 'obsdb:measure_frame' "
            "AND (args->>'frame_id')::bigint = :id"), {"id": frames[bad["nan"].name].id}).scalar()
        zero_points = c.execute(text("SELECT count(*) FROM zeropoints")).scalar()
    engine.dispose()
    for src in good_lights:
        assert frames[src.name].state == "measured", frames[src.name]
    assert zero_points >= len(good_lights)

    nan = frames[bad["nan"].name]
    assert nan.state == "failed" and "no finite pixel" in nan.state_reason, nan
    assert nan.id not in meas
    assert nan_measure_runs == 1  # not measured again each time its field got a new frame

    unknown_exposure = (("negative_exptime", "EXPTIME=-5.0 is negative"),
                        ("exptime_abc", "EXPTIME='abc' is not a number"))
    for name, card in unknown_exposure:
        frame = frames[bad[name].name]
        assert frame.exptime is None and any(card in w for w in frame.warnings), frame
        # bias and flat need no exposure time; a dark does, and there is one: the frame
        # fails on it, saying so, after max_attempts (2) tries
        assert frame.state == "failed", frame
        assert re.fullmatch(r"attempt 2/2: ValueError: dark subtraction needs the frame's exposure time, got None"
                            r" at \w+\.py:\d+", frame.state_reason), frame.state_reason

    old = frames[bad["year_1900"].name]
    assert old.date_obs is None and old.mjd_mid is None
    assert any("before 1950: ignored" in w for w in old.warnings) and any(
        "no usable observation time" in w for w in old.warnings), old.warnings
    assert old.state == "measured"
    assert meas[old.id].n > 0 and meas[old.id].n_bjd == 0 and meas[old.id].n_mjd == 0  # no time, not 1900

    big = frames[bad["big_header"].name]
    assert big.state == "measured" and big.n_cards > 10_000

    assert daemon.terminate_and_wait(30) == 0, daemon.tail()
    print(f"FIGURES bad_input {{\"files\": {len(bad) + len(links)}, \"rejected\": {len(records)}, "
          f"\"kept_with_reason\": {len(KEPT)}, \"daemon_exits\": 0}}")


def _without_root_powers() -> tuple[str, ...]:
    """A command prefix that runs the daemon without the capabilities that let root read
    any file (as root), or nothing (as anyone else, for whom chmod 000 is enough)."""
    if os.geteuid() != 0:
        return ()
    capsh = shutil.which("capsh")
    if capsh is None:
        pytest.skip("running as root without capsh: root reads a file whatever its permissions, and the "
                    "daemon cannot be run without CAP_DAC_OVERRIDE to make one unreadable to it")
    return (capsh, "--drop=cap_dac_override,cap_dac_read_search", "--", "-c", 'exec "$@"', "obsdb")


@pytest.mark.timeout(120)
def test_unreadable_file_is_recorded_and_the_daemon_goes_on(night, tmp_path, db_url, procs: Procs):
    prefix = _without_root_powers()
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    locked = incoming / "locked.fits"
    shutil.copyfile(night.lights[0], locked)
    locked.chmod(0)
    daemon = procs.start("daemon", "-v", "daemon", incoming, prefix=prefix)
    engine = create_engine(db_url)

    def recorded():
        with engine.connect() as c:
            return c.execute(text("SELECT kind, reason, quarantine_path, attempts FROM rejected_files "
                                  "WHERE path = :p"), {"p": str(locked)}).first()

    row = wait_until(recorded, "the unreadable file to be recorded", timeout=60, procs=procs)
    assert row.kind == "permission" and "permission denied" in row.reason
    assert row.quarantine_path is None  # nothing could be read to copy
    deliver([(night.lights[1], incoming / night.lights[1].name)])
    wait_for_night(db_url, 1, 0, "a good light after the unreadable one", timeout=90, procs=procs, interval=0.25)
    assert recorded().attempts == 1
    engine.dispose()
    assert daemon.terminate_and_wait(30) == 0, daemon.tail()
