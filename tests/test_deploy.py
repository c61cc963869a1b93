"""Deployment: the files in deploy/ say what the code does, and a wheel installed into a
fresh virtual environment runs a night the way the systemd unit starts it.

The quick tests read the example configuration (every setting, each at its default),
the unit files, the environment file and the compose file. The slow one builds the
wheel, installs it into a new venv, runs ``obsdb init`` on a new database, starts
``obsdb daemon`` with the unit's command line and environment, drops a simulated night
into the watched folder, waits until ``obsdb status --format json`` says every frame is
done, and stops the daemon with SIGTERM (exit 0).
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy.engine import make_url

from conftest import REPO
from obsdb.cli.main import cli
from obsdb.config import (
    CalibrationSettings,
    PhotometrySettings,
    QueueSettings,
    Site,
    WatchSettings,
    load_settings,
)
from obsdb.instruments import ProfileError
from obsdb.instruments.profile import InstrumentProfile, load_profiles

DEPLOY = REPO / "deploy"
EXAMPLE = DEPLOY / "obsdb.example.toml"
ENV_EXAMPLE = DEPLOY / "obsdb.env.example"
UNITS = [DEPLOY / "obsdb-daemon.service", DEPLOY / "obsdb-worker@.service"]
INSTALLED_OBSDB = "/opt/obsdb/venv/bin/obsdb"  # where the units expect the console script
SECTIONS = {"site": Site, "watch": WatchSettings, "calibration": CalibrationSettings, "queue": QueueSettings,
            "photometry": PhotometrySettings}
_KEY_LINE = re.compile(r"^(#\s*)?([A-Za-z_][A-Za-z0-9_]*)\s*=")


# -- the example configuration --------------------------------------------------------------


def _keys_by_section(path: Path) -> dict[str, dict[str, bool]]:
    """{section: {key: active?}} of every ``key = value`` line, commented out or not."""
    found: dict[str, dict[str, bool]] = {"": {}}
    section = ""
    for line in path.read_text().splitlines():
        header = re.match(r"^\[([^\]]+)\]", line)
        if header:
            section = header.group(1).strip()
            found.setdefault(section, {})
            continue
        m = _KEY_LINE.match(line)
        if m:
            found[section][m.group(2)] = found[section].get(m.group(2), False) or m.group(1) is None
    return found


def _uncommented(path: Path) -> str:
    return "\n".join(re.sub(r"^#\s*(?=[A-Za-z_][A-Za-z0-9_]*\s*=)", "", line)
                     for line in path.read_text().splitlines())


def test_example_config_holds_every_setting_at_its_default(monkeypatch):
    monkeypatch.delenv("OBSDB_HOME", raising=False)
    monkeypatch.delenv("OBSDB_DATABASE_URL", raising=False)
    settings = load_settings(EXAMPLE)
    for name, cls in SECTIONS.items():
        assert getattr(settings, name) == cls(), f"[{name}] of {EXAMPLE.name} is not the default"
    assert settings.pipeline == {}
    assert settings.database_url is None

    keys = _keys_by_section(EXAMPLE)
    for name, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            assert f.name in keys[name], f"[{name}] {f.name} is not documented in {EXAMPLE.name}"
            # a setting whose default is "not set" can only be shown commented out
            assert keys[name][f.name] == (default is not None), (
                f"[{name}] {f.name}: default {default!r} must be " + ("active" if default is not None else
                                                                      "commented out"))
        assert set(keys[name]) <= {f.name for f in dataclasses.fields(cls)}, f"[{name}] names an unknown setting"
    assert {"home", "database_url"} <= set(keys[""])


def test_example_config_commented_values_are_valid(tmp_path, monkeypatch):
    """Uncommenting every example line gives a file obsdb accepts (names and types right)."""
    monkeypatch.delenv("OBSDB_HOME", raising=False)
    monkeypatch.delenv("OBSDB_DATABASE_URL", raising=False)
    everything = tmp_path / "everything.toml"
    everything.write_text(_uncommented(EXAMPLE))
    settings = load_settings(everything)
    assert settings.watch.give_up_seconds is not None and settings.calibration.flat_max_level is not None
    assert settings.site.lat is not None and settings.photometry.refcat is not None
    assert settings.database_url is not None
    [profile, _generic] = load_profiles(settings.instruments)
    assert profile.gain is not None and profile.site_lat is not None and profile.time_keywords


def test_example_config_shows_every_instrument_profile_key():
    with pytest.raises(ProfileError, match="known: ") as caught:
        InstrumentProfile.from_dict("probe", {"no_such_key": 1})
    known = set(str(caught.value).split("known: ", 1)[1].split(", "))
    assert "match" in known and "gain" in known
    documented = _keys_by_section(EXAMPLE)["instruments.st8"]
    assert known - set(documented) == set(), "instrument profile keys missing from the example"


# -- units, environment, compose ------------------------------------------------------------


def parse_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """A systemd unit as {section: [(key, value), ...]} (keys repeat: Environment=)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
            continue
        key, _, value = line.partition("=")
        current.append((key.strip(), value.strip()))
    return sections


def unit_value(unit: dict, key: str, section: str = "Service") -> str:
    values = [v for k, v in unit[section] if k == key]
    assert values, f"{key}= missing from [{section}]"
    return values[-1]


def read_env_file(path: Path) -> dict[str, str]:
    """What systemd's EnvironmentFile= reads: KEY=VALUE lines, # comments, optional quotes."""
    env = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key.strip()] = value
    return env


def unit_environment(unit: dict, env_file: Path) -> dict[str, str]:
    """Environment= defaults, then the EnvironmentFile (which wins, as in systemd)."""
    env = {}
    for key, value in unit["Service"]:
        if key == "Environment":
            for assignment in shlex.split(value):
                name, _, val = assignment.partition("=")
                env[name] = val
    env.update(read_env_file(env_file))
    return env


def expand_command(line: str, env: dict[str, str]) -> list[str]:
    """systemd's Exec*= expansion: ``${VAR}`` is one word, a lone ``$VAR`` splits on spaces."""
    words = []
    for word in shlex.split(line):
        lone = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word)
        if lone:
            words.extend(env.get(lone.group(1), "").split())
        else:
            words.append(re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: env.get(m.group(1), ""), word))
    return words


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_unit_files_run_obsdb_safely(path, tmp_path):
    unit = parse_unit(path)
    assert unit_value(unit, "EnvironmentFile") == "/etc/obsdb/obsdb.env"
    assert expand_command(unit_value(unit, "ExecStartPre"), {})[1:] == ["init", "--check"]
    start = expand_command(unit_value(unit, "ExecStart"), {"OBSDB_CONCURRENCY": "2", "OBSDB_WATCH_DIRS": "/a /b"})
    assert start[0] == INSTALLED_OBSDB and start[1] in ("daemon", "worker") and "2" in start
    if start[1] == "daemon":
        assert start[-2:] == ["/a", "/b"]
    assert unit_value(unit, "Restart") == "on-failure"
    assert unit_value(unit, "User") == "obsdb"
    assert unit_value(unit, "ProtectSystem") == "strict"
    assert unit_value(unit, "ReadWritePaths") == "/var/lib/obsdb"
    for flag in ("NoNewPrivileges", "PrivateTmp", "ProtectHome"):
        assert unit_value(unit, flag) == "true"
    assert unit_value(unit, "KillSignal") == "SIGTERM"
    assert int(unit_value(unit, "TimeoutStopSec")) >= 600  # longer than any job
    env = unit_environment(unit, ENV_EXAMPLE)
    assert env["OBSDB_HOME"] == unit_value(unit, "ReadWritePaths") == unit_value(unit, "WorkingDirectory")
    assert {"OBSDB_HOME", "OBSDB_CONFIG", "OBSDB_DATABASE_URL", "OBSDB_CONCURRENCY"} <= set(env)

    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        return
    # systemd's own check, with the console script of this environment in place of /opt/...
    script = Path(sys.executable).with_name("obsdb")
    if not script.exists():
        return
    local = tmp_path / path.name
    local.write_text(path.read_text().replace(INSTALLED_OBSDB, str(script)))
    target = local if "@" not in path.name else local.with_name(path.name.replace("@", "@1"))
    if target != local:
        local.rename(target)
    proc = subprocess.run([analyze, "verify", str(target)], capture_output=True, text=True, timeout=60)
    problems = [line for line in (proc.stdout + proc.stderr).splitlines()
                if line.strip() and "/etc/obsdb/obsdb.env" not in line]
    assert proc.returncode == 0 and not problems, proc.stdout + proc.stderr  # unknown keys are only warned of


def test_environment_example_names_what_obsdb_and_the_units_read():
    env = read_env_file(ENV_EXAMPLE)
    read_by_obsdb = {"OBSDB_HOME", "OBSDB_CONFIG", "OBSDB_DATABASE_URL"}
    read_by_units = {"OBSDB_WATCH_DIRS", "OBSDB_CONCURRENCY"}
    assert set(env) == read_by_obsdb | read_by_units
    units = "".join(p.read_text() for p in UNITS)
    for name in read_by_units:
        assert f"${name}" in units or f"${{{name}}}" in units
    assert make_url(env["OBSDB_DATABASE_URL"]).drivername == "postgresql"


def test_compose_file_runs_the_database_the_daemon_and_workers():
    yaml = pytest.importorskip("yaml")
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"db", "init", "daemon", "worker"} <= set(services)
    assert services["init"]["command"] == ["init"]
    assert services["daemon"]["command"][0] == "daemon" and services["worker"]["command"][0] == "worker"
    for name in ("daemon", "worker"):
        service = services[name]
        assert service["depends_on"]["init"]["condition"] == "service_completed_successfully"
        assert service["stop_signal"] == "SIGTERM" and service["restart"] == "on-failure"
        assert "obsdb-home:/var/lib/obsdb" in service["volumes"]
        assert any(v.endswith(":/data/incoming:ro") for v in service["volumes"])
        assert service["environment"]["OBSDB_DATABASE_URL"].startswith("postgresql://")
        assert service["build"]["dockerfile"] == "deploy/Dockerfile"
    assert services["init"]["depends_on"]["db"]["condition"] == "service_healthy"
    assert {"pgdata", "obsdb-home"} <= set(compose["volumes"])

    # The Dockerfile copies every folder the wheel is built from.
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    folders = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].values()
    for folder in folders:
        if "/" not in folder:
            assert re.search(rf"^COPY {folder} {folder}$", dockerfile, re.MULTILINE), folder
            assert f"!{folder}/" in (DEPLOY / "Dockerfile.dockerignore").read_text()


def test_init_check_changes_nothing_and_says_what_to_do(empty_db_url, obsdb_home):
    env = {"OBSDB_DATABASE_URL": empty_db_url, "OBSDB_HOME": str(obsdb_home), "OBSDB_CONFIG": ""}
    runner = CliRunner()
    refused = runner.invoke(cli, ["init", "--check"], env=env)
    assert refused.exit_code == 1 and "schema is empty" in refused.output and "obsdb init" in refused.output
    refused_again = runner.invoke(cli, ["init", "--check"], env=env)
    assert refused_again.exit_code == 1  # the check created nothing
    assert runner.invoke(cli, ["init"], env=env).exit_code == 0
    ok = runner.invoke(cli, ["init", "--check"], env=env)
    assert ok.exit_code == 0 and "current" in ok.output
    both = runner.invoke(cli, ["init", "--check", "--create-roles"], env=env)
    assert both.exit_code == 2


# -- the deployment itself ------------------------------------------------------------------


def _run(cmd: list, *, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kwargs)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def build_wheel(dest: Path) -> Path:
    """The wheel of this source tree, built from a clean copy (the repository is untouched)."""
    src = dest / "src"
    src.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    folders = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].values()
    for folder in folders:
        shutil.copytree(REPO / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", dest / "dist", src])
    [wheel] = (dest / "dist").glob("obsdb-*.whl")
    return wheel


def fill_wheelhouse(wheel: Path, wheelhouse: Path, work: Path) -> None:
    """Wheels of every dependency at the versions of the environment running the tests:
    from the wheelhouse itself when it has them all, else from the package registry."""
    freeze = _run([sys.executable, "-m", "pip", "freeze", "--exclude-editable"]).stdout
    constraints = work / "constraints.txt"
    constraints.write_text("\n".join(line for line in freeze.splitlines()
                                     if line and not line.startswith(("#", "-e", "obsdb"))) + "\n")
    base = [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", wheelhouse, "--find-links", wheelhouse,
            "--constraint", constraints, wheel]
    offline = subprocess.run([str(c) for c in [*base[:4], "--no-index", *base[4:]]], capture_output=True,
                             text=True, timeout=300)
    if offline.returncode != 0:
        _run(base, timeout=900)
    for own in wheelhouse.glob("obsdb-*.whl"):
        own.unlink()


def install_fresh_venv(wheel: Path, wheelhouse: Path, venv: Path) -> Path:
    _run([sys.executable, "-m", "venv", venv])
    _run([venv / "bin" / "pip", "install", "--quiet", "--no-compile", "--no-index", "--find-links", wheelhouse,
          wheel], timeout=600)
    return venv / "bin" / "obsdb"


def _done(status: dict, expected: int) -> bool:
    by = status["by_type_and_state"]
    q = status["queue"]
    lights = by.get("light", {})
    calibrations = [by.get(kind, {}) for kind in ("bias", "dark", "flat")]
    return (status["frames"] == expected and q["todo"] == 0 and q["doing"] == 0
            and set(lights) == {"measured"} and all(set(c) == {"combined"} for c in calibrations))


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_runs_a_night_as_the_unit_starts_it(tmp_path, empty_db_url, request):
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    wheel = build_wheel(tmp_path / "build")
    timings["wheel"] = time.monotonic() - t0

    t0 = time.monotonic()
    # Kept between sessions in pytest's cache (.pytest_cache/, ~140 MB; --cache-clear empties it)
    cache = getattr(request.config, "cache", None)
    wheelhouse = cache.mkdir("obsdb-deploy-wheelhouse") if cache is not None else tmp_path / "wheelhouse"
    fill_wheelhouse(wheel, wheelhouse, tmp_path)
    obsdb = install_fresh_venv(wheel, wheelhouse, tmp_path / "venv")
    timings["install"] = time.monotonic() - t0
    where = _run([tmp_path / "venv" / "bin" / "python", "-c", "import obsdb; print(obsdb.__file__)"],
                 cwd=tmp_path).stdout
    assert str(tmp_path / "venv") in where  # the installed copy, not the repository

    # The site's files: /etc/obsdb/obsdb.env from the example, a config with short waits.
    home, incoming, etc = tmp_path / "var-lib-obsdb", tmp_path / "incoming", tmp_path / "etc-obsdb"
    for folder in (home, incoming, etc):
        folder.mkdir()
    config = etc / "obsdb.toml"
    config.write_text(
        "[watch]\nsettle_seconds = 0.5\nrescan_seconds = 5.0\n"
        "[calibration]\nquiet_seconds = 2.0\ngrace_seconds = 10.0\nretry_wait_seconds = 1.0\n"
        "[queue]\nheartbeat_seconds = 2.0\nstalled_seconds = 30.0\n"
    )
    server_url = make_url(empty_db_url).set(drivername="postgresql").render_as_string(hide_password=False)
    site = {"OBSDB_HOME": str(home), "OBSDB_CONFIG": str(config), "OBSDB_DATABASE_URL": server_url,
            "OBSDB_WATCH_DIRS": str(incoming), "OBSDB_CONCURRENCY": "2"}
    env_file = etc / "obsdb.env"
    lines = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        key = line.partition("=")[0].strip()
        lines.append(f"{key}={site[key]}" if key in site and not line.startswith("#") else line)
    env_file.write_text("\n".join(lines) + "\n")
    unit = parse_unit(DEPLOY / "obsdb-daemon.service")
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(home),
           "LANG": "C.UTF-8", **unit_environment(unit, env_file)}
    assert {k: env[k] for k in site} == site

    def command(key: str) -> list[str]:
        words = expand_command(unit_value(unit, key), env)
        assert words[0] == INSTALLED_OBSDB
        return [str(obsdb), *words[1:]]

    def obsdb_run(*args, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(obsdb), *map(str, args)], env=env, cwd=home, capture_output=True, text=True,
                              timeout=300)
        if check and proc.returncode != 0:
            raise AssertionError(f"obsdb {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr}")
        return proc

    # The start-up check refuses the new, empty database; `obsdb init` makes it current.
    refused = subprocess.run(command("ExecStartPre"), env=env, cwd=home, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and "obsdb init" in refused.stderr
    obsdb_run("init")
    subprocess.run(command("ExecStartPre"), env=env, cwd=home, check=True, capture_output=True, timeout=120)

    staging = tmp_path / "staging"
    obsdb_run("simulate", staging, "--size", "256", "--fields", "1", "--lights", "2")
    obsdb_run("refcat", "load", staging / "refcat.csv", "--name", "sim", "--ra-col", "ra", "--dec-col", "dec",
              "--id-col", "id", "--mag", "g=g:g_err", "--mag", "r=r:r_err")
    files = sorted((staging / "raw").rglob("*.fits"))
    assert len(files) > 30

    log = (tmp_path / "daemon.log").open("w")
    t0 = time.monotonic()
    daemon = subprocess.Popen(command("ExecStart"), env=env, cwd=home, stdout=log, stderr=subprocess.STDOUT)
    try:
        time.sleep(1.0)
        for path in files:  # the night arrives file by file, into a folder of its own
            target = incoming / path.relative_to(staging / "raw")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
        status: dict = {}
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert daemon.poll() is None, "the daemon died:\n" + (tmp_path / "daemon.log").read_text()[-5000:]
            status = json.loads(obsdb_run("status", "--format", "json").stdout)
            if _done(status, len(files)):
                break
            time.sleep(2.0)
        else:
            raise AssertionError(f"not done in time: {json.dumps(status, indent=1)[:3000]}\n"
                                 + (tmp_path / "daemon.log").read_text()[-5000:])
        timings["night"] = time.monotonic() - t0
        assert status["queue"]["failed"] == 0 and status["rejected_files"] == 0

        t0 = time.monotonic()
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(timeout=120)
        timings["stop"] = time.monotonic() - t0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        log.close()
    assert code == 0, (tmp_path / "daemon.log").read_text()[-5000:]
    # the products were written under OBSDB_HOME, the only folder the unit lets it write
    assert list((home / "products").rglob("*.fits"))
    print("deployment timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
