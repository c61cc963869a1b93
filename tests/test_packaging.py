"""Every package folder is installed (pyproject lists them by hand because of the
obsdb.cli / obsdb.services / obsdb.migrations folder mapping)."""

from __future__ import annotations

import tomllib

from conftest import REPO


def test_every_package_folder_is_listed():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    mapping = config["package-dir"]
    found = set()
    for package, folder in mapping.items():
        for init in (REPO / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(REPO / folder)
            found.add(".".join([package, *relative.parts]) if relative.parts else package)
    assert found == listed
