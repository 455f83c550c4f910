"""docs/zoo.md is generated from the YAMLs and must be up to date."""

import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_zoo_table_is_up_to_date():
    gen = runpy.run_path(str(ROOT / "scripts" / "gen_zoo_docs.py"))
    assert (ROOT / "docs" / "zoo.md").read_text() == gen["render"](), "run: python scripts/gen_zoo_docs.py"


def test_plot_numbers_are_up_to_date():
    """docs/img/*.png are drawn from docs/img/plots.json; the numbers (not the pixels) must be current."""
    gen = runpy.run_path(str(ROOT / "scripts" / "gen_plots.py"))
    assert (ROOT / "docs" / "img" / "plots.json").read_text() == gen["render_json"](), "run: python scripts/gen_plots.py"
    for png in ("kv_cache.png", "params.png"):
        assert (ROOT / "docs" / "img" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
