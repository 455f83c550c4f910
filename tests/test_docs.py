"""docs/zoo.md is generated from the YAMLs and must be up to date."""

import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_zoo_table_is_up_to_date():
    gen = runpy.run_path(str(ROOT / "scripts" / "gen_zoo_docs.py"))
    assert (ROOT / "docs" / "zoo.md").read_text() == gen["render"](), "run: python scripts/gen_zoo_docs.py"
