"""``obsdb simulate``: write a realistic night of raw frames, a reference catalog and the truth."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click


@click.command("simulate")
@click.argument("outdir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", type=int, default=1, show_default=True, help="Random seed; same seed, same night.")
@click.option("--nights", type=int, default=1, show_default=True, help="Consecutive nights to simulate.")
@click.option("--size", type=int, default=None, help="Frame size in pixels (square).")
def simulate(outdir: Path, seed: int, nights: int, size: int | None) -> None:
    """Simulate observing nights into OUTDIR: raw/ frames, refcat.csv and truth/."""
    from obsdb.simulate import SimulationConfig
    from obsdb.simulate import simulate as run_simulation

    config = SimulationConfig(seed=seed, nights=nights)
    if size is not None:
        config = dataclasses.replace(config, size=size)
    summary = run_simulation(outdir, config)
    click.echo(str(summary))


COMMANDS = [simulate]
