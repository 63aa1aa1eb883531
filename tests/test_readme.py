"""The README's results tables equal the committed results files they come from (onelora.report.readme)."""

from __future__ import annotations

from pathlib import Path

import pytest

from onelora.report.readme import ReadmeError, blocks, markdown_tables, refresh, stale

ROOT = Path(__file__).resolve().parents[1]


def test_readme_tables_equal_their_results_files() -> None:
    text = (ROOT / "README.md").read_text()
    paths = {path for path, _, _ in blocks(text)}
    assert {"results/demo/table.md", "results/mini/table.md", "results/sum_diagnostic/by_type.md"} <= paths
    assert stale(text, ROOT) == [], "run python scripts/readme_tables.py (and commit the results files)"


def test_a_block_that_differs_from_its_file_is_found_and_refreshed(tmp_path: Path) -> None:
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "r.md").write_text("# R\n\n| a |\n|---|\n| 1 |\n\ntext\n\n| b |\n|---|\n| 2 |\n")
    assert markdown_tables((tmp_path / "results" / "r.md").read_text()) == ["| a |\n|---|\n| 1 |\n",
                                                                            "| b |\n|---|\n| 2 |\n"]  # fmt: skip
    readme = "intro\n<!-- table: results/r.md n=2 -->\n| b |\n|---|\n| 3 |\n<!-- /table -->\nafter\n"
    assert stale(readme, tmp_path) == ["results/r.md (table 2)"]
    fixed = refresh(readme, tmp_path)
    assert fixed == "intro\n<!-- table: results/r.md n=2 -->\n| b |\n|---|\n| 2 |\n<!-- /table -->\nafter\n"
    assert stale(fixed, tmp_path) == []
    with pytest.raises(ReadmeError, match="results/none.md, which does not exist"):
        stale("<!-- table: results/none.md -->\n<!-- /table -->\n", tmp_path)
    with pytest.raises(ReadmeError, match="table 3 of results/r.md, which has 2"):
        refresh("<!-- table: results/r.md n=3 -->\n<!-- /table -->\n", tmp_path)


def test_readme_cites_no_issue_numbers() -> None:
    """The README describes the suite; which issue changed what belongs in the history, not in it."""
    import re

    found = re.findall(r"[^\n]{0,40}\bissues? #?\d+[^\n]{0,20}", (ROOT / "README.md").read_text(), re.IGNORECASE)
    assert found == []


def python_block(text: str, heading: str) -> str:
    """The first ```python block after `heading` in the README, as it stands."""
    rest = text[text.index(f"\n{heading}\n") :]
    start = rest.index("```python\n") + len("```python\n")
    return rest[start : rest.index("```\n", start)]


@pytest.mark.parametrize("heading", ["## 1LoRA on your own model", "### Interop with HF peft"])
def test_readme_snippets_run_as_they_stand(heading: str, tmp_path: Path) -> None:
    """They used `model` and `base` without defining them; the interop one then loaded into the model that
    PeftModel.from_pretrained had modified in place. Each runs as a program of its own, in an empty folder."""
    import os
    import subprocess
    import sys

    script = tmp_path / "snippet.py"
    script.write_text(python_block((ROOT / "README.md").read_text(), heading))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, env=env,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    if "Interop" in heading:
        assert proc.stdout.strip().splitlines()[-1] == "onelora"
    else:
        assert "'adapted_layers': 12" in proc.stdout  # tiny ViT: 2 blocks of q, k, v, o, fc1, fc2
