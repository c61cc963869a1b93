"""Settings: the example file stays loadable, bad files say what is wrong."""

from __future__ import annotations

import pytest

from conftest import REPO
from obsdb.config import ConfigError, load_settings
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
