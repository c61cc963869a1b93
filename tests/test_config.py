"""Settings: the example file stays loadable, bad files say what is wrong."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from conftest import REPO
from obsdb.config import ConfigError, Settings, Site, load_settings
from obsdb.instruments import load_profiles


def test_example_config_loads_with_its_profiles(monkeypatch):
    monkeypatch.delenv("OBSDB_HOME", raising=False)
    settings = load_settings(REPO / "deploy" / "obsdb.example.toml")
    assert settings.watch.settle_seconds == 2.0
    assert settings.calibration.steps[0] == "saturation"
    assert [p.name for p in load_profiles(settings.instruments)] == ["st8", "generic"]


def test_environment_wins_over_file(tmp_path, monkeypatch):
    cfg = tmp_path / "obsdb.toml"
    cfg.write_text('home = "/nowhere"\ndatabase_url = "postgresql://a@b/c"\n')
    monkeypatch.setenv("OBSDB_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("OBSDB_DATABASE_URL", raising=False)
    settings = load_settings(cfg)
    assert settings.home == (tmp_path / "home").resolve()
    assert settings.database_url == "postgresql://a@b/c"
    assert not settings.embedded


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[watch]\nsettle = 3\n", "unknown setting.*settle"),
        ("[watch\n", "not valid TOML"),
        ("watch = 3\n", r"\[watch\] .* must be a table"),
    ],
)
def test_bad_config_files_are_explained(tmp_path, text, match):
    cfg = tmp_path / "obsdb.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_settings(cfg)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


def test_config_hash_follows_what_shapes_products_not_scheduling():
    from obsdb.provenance import config_hash

    base = Settings(home=Path("/srv/obsdb"))

    def changed(section: str, **values) -> Settings:
        return dataclasses.replace(base, **{section: dataclasses.replace(getattr(base, section), **values)})

    # when work runs: the same products
    assert config_hash(changed("calibration", quiet_seconds=5.0, grace_seconds=60.0, max_attempts=9,
                               retry_wait_seconds=1.0)) == config_hash(base)
    # what is made: other products (the site moves BJD_TDB)
    assert config_hash(changed("calibration", temperature_tolerance=5.0)) != config_hash(base)
    assert config_hash(changed("photometry", detect_threshold=5.0)) != config_hash(base)
    assert config_hash(dataclasses.replace(base, site=Site(lat=-30.2, lon=-70.7, height=2200.0))) != config_hash(base)
