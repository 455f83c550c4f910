"""A non-editable install must carry every subpackage and every zoo YAML (README's main job uses one)."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_subpackage_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "llmzoo").rglob("__init__.py")}
    assert found <= listed, f"add {sorted(found - listed)} to [tool.setuptools] packages"
    assert "llmzoo.configs" in listed


def test_zoo_yamls_ship_as_package_data():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert pyproject["package-dir"]["llmzoo.configs"] == "configs"
    assert pyproject["package-data"]["llmzoo.configs"] == ["**/*.yaml"]
    assert len(list((ROOT / "configs").rglob("*.yaml"))) > 80
