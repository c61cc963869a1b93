"""``obsdb simulate``: write a realistic night of raw frames, a reference catalog and the truth."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import click


@click.command("simulate")
@click.argument("outdir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", type=int, default=1, show_default=True, help="Random seed; same seed, same night.")
@click.option("--nights", type=int, default=1, show_default=True, help="Consecutive nights to simulate.")
@click.option("--size", type=int, default=None, help="Frame side in pixels [default: 1024].")
@click.option("--fields", "n_fields", type=int, default=None, help="Number of fields observed [default: 2].")
@click.option("--lights", type=int, default=None, help="Light frames per field and filter [default: 16].")
@click.option("--exptime", type=float, default=None, help="Light exposure time, seconds [default: 120].")
@click.option("--start-date", default=None, help="Local date of the first evening, YYYY-MM-DD.")
@click.option("--overwrite", is_flag=True, help="Replace what an earlier simulation wrote in OUTDIR.")
def simulate(outdir: Path, seed: int, nights: int, size: int | None, n_fields: int | None,
             lights: int | None, exptime: float | None, start_date: str | None, overwrite: bool) -> None:
    """Simulate observing nights into OUTDIR: raw/ frames, refcat.csv and truth/."""
    from obsdb.simulate import SimulationConfig
    from obsdb.simulate import simulate as run_simulation

    changes = {
        "seed": seed, "nights": nights, "size": size, "n_fields": n_fields,
        "lights_per_field_per_filter": lights, "light_exptime": exptime, "start_date": start_date,
    }
    try:
        config = dataclasses.replace(SimulationConfig(), **{k: v for k, v in changes.items() if v is not None})
    except ValueError as exc:
        raise click.ClickException(f"cannot simulate that: {exc}") from exc
    if overwrite:
        # Only what the simulator itself writes; anything else in OUTDIR stays.
        for name in ("raw", "truth"):
            shutil.rmtree(outdir / name, ignore_errors=True)
        (outdir / "refcat.csv").unlink(missing_ok=True)
    try:
        summary = run_simulation(outdir, config)
    except FileExistsError as exc:
        raise click.ClickException(f"{exc} (or pass --overwrite)") from exc
    except ValueError as exc:
        raise click.ClickException(f"cannot simulate that: {exc}") from exc
    counts = ", ".join(f"{n} {kind}" for kind, n in summary.n_frames.items())
    click.echo(
        f"simulated {len(summary.nights)} night(s) into {summary.outdir}: {counts}; "
        f"{summary.n_stars} catalog stars in {summary.refcat.name}; truth in {summary.truth_dir} "
        f"({summary.bytes_written / 1e6:.0f} MB, {summary.seconds:.1f} s)"
    )
    for raw in summary.raw_dirs:
        click.echo(f"raw frames: {raw}")


COMMANDS = [simulate]
