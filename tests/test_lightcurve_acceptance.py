"""Acceptance of the light-curve commands on a simulated run, end to end: real ``obsdb``
subprocesses (refcat load, ingest, process, lc, variables, period) on a real PostgreSQL,
the plot opened in headless Chromium, and the answers compared with the simulator's truth.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from obsdb.simulate import SimulationConfig, Truth, simulate

from conftest import run_obsdb
from test_lightcurve_browser import CHROMIUM, assert_clean, browser, open_page  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow

# Two nights, so that the short-period pulsator is covered for several cycles.
SIM = SimulationConfig(size=512, n_fields=1, nights=2, lights_per_field_per_filter=12, seed=11,
                       stars_per_deg2=6000.0)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("lcnight") / "sim"
    simulate(out, SIM)
    return out, Truth.load(out)


def _json(*args, env):
    return json.loads(run_obsdb(*args, env=env, check=True).stdout)


def test_light_curves_variables_and_periods_of_a_simulated_run(run, cli_env, tmp_path, request):
    outdir, truth = run
    run_obsdb("refcat", "load", outdir / "refcat.csv", "--name", "sim", "--ra-col", "ra", "--dec-col", "dec",
              "--id-col", "id", "--mag", "g=g:g_err", "--mag", "r=r:r_err", env=cli_env, check=True)
    for raw in sorted((outdir / "raw").iterdir()):
        run_obsdb("ingest", raw, env=cli_env, check=True)
    run_obsdb("process", "--no-progress", env=cli_env, check=True, timeout=900)
    n_lights = len(truth.select(kind="light"))

    # -- obsdb lc for every variable: its light curve, in both filters
    variables = truth.variables()
    source_of: dict[int, int] = {}
    for star_id, ra, dec in zip(variables["id"].tolist(), variables["ra"].tolist(), variables["dec"].tolist(),
                                strict=True):
        points = _json("lc", f"{ra:.6f}", f"{dec:.6f}", "--format", "json", env=cli_env)
        assert {p["filter"] for p in points} == {"g'", "r'"}, star_id
        assert len(points) >= 0.8 * n_lights, (star_id, len(points))
        assert len({p["source_id"] for p in points}) == 1
        source_of[star_id] = points[0]["source_id"]
        good = [p for p in points if p["flags"] & ~(128 | 512) == 0 and p["mag"] is not None]
        assert good, star_id
        mjd = np.array([p["mjd"] for p in good])
        true = truth.true_mag(star_id, "g", mjd)
        g = np.array([p["filter"] == "g'" for p in good])
        resid = np.array([p["mag"] for p in good])[g] - true[g]
        assert abs(np.median(resid)) < 0.05, (star_id, np.median(resid))

    # -- the plot page renders in a real browser, one trace per filter
    if CHROMIUM is not None:
        pulsator = int(variables["id"][variables["var_type"] == "pulsator"][0])
        page = tmp_path / "lc.html"
        run_obsdb("lc", "--source-id", source_of[pulsator], "--plot", page, env=cli_env, check=True)
        shown = open_page(request.getfixturevalue("browser"), page)
        assert_clean(shown)
        assert sorted(n for n in shown["names"] if n in ("g'", "r'")) == ["g'", "r'"]

    # -- obsdb variables: every variable whose variation stands out of its noise ranks above
    # every constant star within half a magnitude of it
    ranked = _json("variables", "--filter", "g'", "--top", "1000", "--min-points", "8", "--format", "json",
                   env=cli_env)
    rank = {r["source_id"]: i for i, r in enumerate(ranked)}
    mean_mag = {r["source_id"]: r["mean_mag"] for r in ranked}
    constant_ids = set(truth.stars["id"][truth.stars["var_type"] == "constant"].tolist())
    with_catalog = _catalog_ids(cli_env)
    constants = [s for s, c in with_catalog.items() if c in constant_ids and s in rank]
    checked = 0
    for star_id, kind in zip(variables["id"].tolist(), variables["var_type"].tolist(), strict=True):
        sid = source_of[star_id]
        if kind not in ("pulsator", "eclipsing") or sid not in rank:
            continue
        mjd = np.linspace(truth.frames[0].mjd_mid, truth.frames[-1].mjd_mid, 400)
        if np.ptp(truth.true_mag(star_id, "g", mjd)) < 0.1:
            continue
        similar = [c for c in constants if abs(mean_mag[c] - mean_mag[sid]) < 0.5]
        assert similar and all(rank[sid] < rank[c] for c in similar), (kind, star_id, rank[sid])
        checked += 1
    assert checked >= 2

    # -- obsdb period: the pulsator's period within 0.5 %
    found = []
    for star_id in variables["id"][variables["var_type"] == "pulsator"].tolist():
        true_period = truth.star(star_id)["period"]
        if true_period > 0.3:  # fewer than ~4 cycles over two nights' hours: not measurable to 0.5 %
            continue
        result = _json("period", "--source-id", source_of[star_id], "--filter", "g'", "--format", "json",
                       env=cli_env)
        print(f"pulsator {star_id}: period {result['period']:.5f} d, true {true_period:.5f} d, "
              f"FAP {result['false_alarm_probability']:.2e}")
        assert result["period"] == pytest.approx(true_period, rel=0.005)
        found.append(star_id)
    assert found


def _catalog_ids(env) -> dict[int, int]:
    """source id -> the catalog's own star id (the truth's id), for linked sources."""
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(env["OBSDB_DATABASE_URL"]).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT s.id, CAST(r.catalog_id AS bigint) FROM sources s JOIN refcat_stars r "
                            "ON r.refcat_id = s.refcat_id AND r.star_id = s.refstar_id").fetchall()
    return dict(rows)
