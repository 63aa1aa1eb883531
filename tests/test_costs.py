"""`scripts/costs.py` on reduced configurations of each task: its files, its counts against the dry run's, the
dry run's saved activations against the ones measured in the task's own training step, and the paper's ratios."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pandas as pd
import pytest
from helpers import hydra_cfg

from onelora.commands.run import dry_run
from onelora.costs import COLUMNS, Settings, run_costs, write_outputs
from onelora.report.manifest import PAPER_DIR, load_manifest

ROOT = Path(__file__).resolve().parents[1]

# manifest -> (reduced configuration, methods measured: every method of the ViT table, a few of the others)
REDUCED = {
    "fig6": (("model=vit_tiny", "data.module.batch_size=2"), None),
    "fig3": (
        ("model=llama_tiny", "data.module.max_length=32", "data.module.batch_size=2"),
        ["onelora", "lora_qkv", "difffit"],
    ),  # fmt: skip
    "table2": (
        ("model=depth_anything_tiny", "data.module.batch_size=2", "data.module.input_size=[28,56]"),
        ["onelora", "dora", "full"],
    ),
    "fig5": (("model=dit_tiny", "data.module.batch_size=2"), ["onelora", "vera"]),
}


@pytest.fixture(scope="module", params=list(REDUCED))
def measured(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, list]:
    name = request.param
    overrides, methods = REDUCED[name]
    manifest = load_manifest(name)
    rows = run_costs(manifest, Settings(steps=1, warmup=0, device="cpu", overrides=overrides), methods, progress=False)
    out = tmp_path_factory.mktemp(f"costs_{name}")
    write_outputs(rows, out, name, manifest.title, "test")
    return name, out, rows


def test_files_columns_and_counts_equal_the_dry_runs(measured: tuple, tmp_path: Path) -> None:
    name, out, rows = measured
    with open(out / f"{name}.csv") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == COLUMNS and len(table) == len(rows)
    assert (out / f"{name}.png").read_bytes()[:4] == b"\x89PNG" and (out / f"{name}.md").read_text().startswith("# ")
    overrides, _ = REDUCED[name]
    manifest = load_manifest(name)
    groups = {g.transfer: g.experiment for g in manifest.groups}
    for row in table[:3]:
        with hydra_cfg(tmp_path, f"experiment={groups[row['transfer']]}", f"peft={row['method']}", *overrides,
                       "model.pretrained=null", "dry_run=true") as cfg:  # fmt: skip
            counts = dry_run(cfg)
        for key in ("trainable_params", "peft_params", "total_params"):
            assert int(row[key]) == counts[key], (name, row["method"], key)


def test_estimated_saved_activations_match_the_training_step(measured: tuple) -> None:
    """The dry run's trace (fake tensors, CPU autocast as the run) within 3% of what the real step saved."""
    name, _, rows = measured
    for r in rows:
        assert r["saved_bytes"] > 0 and r["est_activations_bytes"] > 0
        assert abs(r["est_activations_bytes"] / r["saved_bytes"] - 1) <= 0.03, (name, r["method"], r)


def test_ratios_to_the_reference_and_the_papers_columns(measured: tuple) -> None:
    name, _, rows = measured
    ref = next(r for r in rows if r["method"] == "onelora")
    assert ref["step_ratio"] == 1.0 and ref["memory_ratio"] == 1.0 and ref["reference"] == "onelora"
    paper = pd.concat([pd.read_csv(p) for p in (PAPER_DIR / "tableS9.csv", PAPER_DIR / "tableS6.csv",
                                                 PAPER_DIR / "tableS3.csv", PAPER_DIR / "tableS8.csv")])  # fmt: skip
    for r in rows:
        assert r["memory_ratio"] == pytest.approx(r["measured_bytes"] / ref["measured_bytes"])
        src = paper[(paper.transfer == r["transfer"]) & (paper.method == r["method"])]
        base = paper[(paper.transfer == r["transfer"]) & (paper.method == "onelora")]
        if len(src) and len(base):  # Table 2's NYU->KITTI runs are Table S3's
            assert r["paper_memory_ratio"] == pytest.approx(src.memory_pct.iloc[0] / base.memory_pct.iloc[0])
            assert r["paper_time_ratio"] == pytest.approx(src.time.iloc[0] / base.time.iloc[0])


def test_cli_bad_input_is_one_line_and_exit_2(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("costs_script", ROOT / "scripts" / "costs.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["nosuch", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown experiment manifest" in err[0]
    assert script.main(["fig6", "--methods", "nosuch", "--device", "cpu", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown method" in err[0] and not list(tmp_path.iterdir())
    bad = ["fig6", "--methods", "onelora", "--device", "cpu", "--set", "data.module.batch_size=abc", "--out"]
    assert script.main([*bad, str(tmp_path)]) == 2  # a value of the wrong type: one line, as from run.py
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.module.batch_size='abc' is not allowed" in err[0]
