"""Reproduction commands write to results/local/ and show their table beside the committed reference."""

from __future__ import annotations

import subprocess
from pathlib import Path

from helpers import ROOT

from onelora.report.compare import compare, compare_files

REF = """# Demo

| Method | Time [s] ↓ | Accuracy [%] ↑ | Peak RSS [GB] ↓ | Params ↓ | Seeds |
|---|---:|---:|---:|---:|---:|
| Head only | **2.9** | 55.36 ± 0.63 | **1.2** | **0** | 2/2 |
| 1LoRA | 4.56 | <u>64.73 ± 1.3</u> | 1.3 | 1.79K | 2/2 |

| Method | 0.001 | 0.01 |
|---|---:|---:|
| LoRA | 66.67 | **85.19** |
| 1LoRA | 46.67 | **58.52** |
"""


def test_times_and_marks_are_not_compared_values_are() -> None:
    same = REF.replace("**2.9**", "7.1").replace("<u>64.73 ± 1.3</u>", "64.73 ± 1.3").replace("| 1.3 |", "| 2.0 |")
    lines, differ = compare(REF, same)
    assert differ == 0
    assert lines == [
        "| Method (Accuracy [%] ↑) | committed | this run | same? |",
        "|---|---:|---:|---|",
        "| Head only | 55.36 ± 0.63 | 55.36 ± 0.63 | yes |",
        "| 1LoRA | 64.73 ± 1.3 | 64.73 ± 1.3 | yes |",
        "table 2: all 4 compared cells the same",
    ]
    moved = REF.replace("55.36 ± 0.63", "57.81 ± 0.32").replace("| 46.67 |", "| 47.41 |")
    lines, differ = compare(REF, moved)
    assert differ == 2
    assert "| Head only | 55.36 ± 0.63 | 57.81 ± 0.32 | no |" in lines
    assert lines[-1] == "table 2: 1 of 4 compared cells differ: 1LoRA 0.001 46.67 -> 47.41"
    grown = REF.replace("| 1LoRA | 46.67 | **58.52** |", "| 1LoRA | 46.67 | **58.52** |\n| BitFit | 45.93 | 60.00 |")
    lines, differ = compare(REF, grown)  # a row only this run has: its 2 cells differ, of the 3 rows' 6
    assert differ == 2 and lines[-1].startswith("table 2: 2 of 6 compared cells differ: BitFit 0.001 – -> 45.93")


def test_the_verdict_follows_the_comparison_and_no_reference_gives_none(tmp_path: Path) -> None:
    ref, fresh = tmp_path / "ref.md", tmp_path / "fresh.md"
    fresh.write_text(REF.replace("55.36 ± 0.63", "57.81 ± 0.32"))
    lines, differ = compare_files(ref, fresh)  # no committed reference yet (a first `make real`)
    assert (lines, differ) == ([f"no committed reference {ref}: nothing to compare this run's {fresh} with"], 0)
    ref.write_text(REF)
    lines, differ = compare_files(ref, fresh)
    assert differ == 1 and lines[-1].startswith("1 cell(s) differ from the committed reference")
    lines, differ = compare_files(ref, ref)
    assert differ == 0 and lines[-1] == "every compared cell the same as the committed reference"


def test_make_demo_and_mini_write_results_local_unless_update(tmp_path: Path) -> None:
    def plan(*args: str) -> str:
        cmd = ["make", "-n", "-o", ".venv/.installed", *args]
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout

    for name in ("demo", "mini"):
        text = plan(name)
        assert f"--out results/local/{name} --reference results/{name}" in text
        assert f"--out results/{name}\n" not in text and f"results/{name}/table.md" not in text
        assert f"--out results/{name}\n" in plan(name, "UPDATE=1")
    assert "/results/local/" in (ROOT / ".gitignore").read_text().splitlines()
    assert "--update-reference" not in plan("source-model") and "--update-reference" in plan("source-model", "UPDATE=1")


def test_the_sum_diagnostic_writes_results_local_beside_the_reference(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    import runpy
    import shutil

    main = runpy.run_path(str(ROOT / "scripts" / "sum_diagnostic.py"), run_name="diagnostic")["main"]
    main.__globals__["ROOT"] = tmp_path  # a clone of its own: configs linked, the committed table copied
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    reference = tmp_path / "results" / "sum_diagnostic"
    reference.mkdir(parents=True)
    shutil.copy(ROOT / "results" / "sum_diagnostic" / "by_type.md", reference)
    before = (reference / "by_type.md").read_text()
    assert main(["--models", "llama_tiny"]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "results" / "local" / "sum_diagnostic" / "by_type.md").is_file()
    assert (
        sorted(p.name for p in reference.iterdir()) == ["by_type.md"]
        and reference.joinpath("by_type.md").read_text() == before
    )
    assert "beside the committed results/sum_diagnostic/by_type.md" in out
    assert "table 1: 60 of 95 compared cells differ" in out  # 12 rows (other models) x 5 columns: missing here
