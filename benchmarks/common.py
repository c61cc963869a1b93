"""Shared by the benchmark scripts: a scratch database, timing, and the result table."""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql
from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url

from obsdb.database.schema import upgrade_schema


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}"


@contextmanager
def scratch_database() -> Iterator[Engine]:
    """A fresh database at the current schema: on OBSDB_DATABASE_URL's server, else embedded."""
    server = os.environ.get("OBSDB_DATABASE_URL")
    holder = None
    if server:
        admin = make_url(server).set(drivername="postgresql")
    else:
        import pgserver

        holder = tempfile.TemporaryDirectory(prefix="obsdb-bench-")
        srv = pgserver.get_server(Path(holder.name) / "pgdata", cleanup_mode="stop")
        admin = make_url(srv.get_uri())
    name = f"obsdb_bench_{uuid.uuid4().hex[:8]}"
    admin_url = admin.render_as_string(hide_password=False)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    engine = create_engine(admin.set(drivername="postgresql+psycopg", database=name))
    try:
        upgrade_schema(engine)
        yield engine
    finally:
        engine.dispose()
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        if holder is not None:
            holder.cleanup()


@contextmanager
def timed() -> Iterator[list[float]]:
    box: list[float] = []
    start = time.perf_counter()
    yield box
    box.append(time.perf_counter() - start)


@dataclass
class Row:
    figure: str
    obsdb: float
    baseline: float | None
    unit: str
    higher_is_better: bool = True

    def ratio(self) -> str:
        if self.baseline in (None, 0) or self.obsdb == 0:
            return ""
        r = self.obsdb / self.baseline if self.higher_is_better else self.baseline / self.obsdb
        return f"{r:.2f}x"


def print_table(title: str, rows: list[Row]) -> None:
    print(f"\n{title}\nmachine: {machine()}")
    header = ("figure", "obsdb", "baseline", "ratio (obsdb better when > 1)")
    cells = [
        (r.figure, f"{r.obsdb:,.3g} {r.unit}", "" if r.baseline is None else f"{r.baseline:,.3g} {r.unit}", r.ratio())
        for r in rows
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("-+-".join("-" * w for w in widths))
    for c in cells:
        print(" | ".join(v.ljust(w) for v, w in zip(c, widths)))


Measure = Callable[[argparse.Namespace], tuple[str, list[Row], list[str]]]


def entry_points(measure: Measure, parser: Callable[[], argparse.ArgumentParser], quick: list[str],
                 full: list[str] | None = None) -> tuple[Callable[[bool], list[Row]], Callable[..., None]]:
    """A bench's ``run(quick)`` (its rows for ``python -m benchmarks``, at the ``quick`` or
    ``full`` arguments) and ``main(argv)`` (run alone: its own table and notes)."""

    def run(quick_run: bool = False) -> list[Row]:
        _, rows, notes = measure(parser().parse_args(quick if quick_run else (full or [])))
        print("\n".join(notes))
        return rows

    def main(argv: list[str] | None = None) -> None:
        title, rows, notes = measure(parser().parse_args(argv))
        print_table(title, rows)
        print("\n" + "\n".join(notes))

    return run, main
