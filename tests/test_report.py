"""Reports: records with known values -> exact mean/std, styled table cells, coverage, figures; the paper's
tables from results/paper; the manifests and the sweep command; the figures notebook executes."""

from __future__ import annotations

import json
import math
import runpy
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml
from PIL import Image

from onelora.report import load_manifest, manifest_paths, write_paper_figures, write_report
from onelora.report.manifest import ManifestError, parse_manifest
from onelora.report.tables import format_params

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "results" / "paper"
ITEMS = {"table2", "tableS1", "fig2a", "fig2b", "fig2c", "fig2d", "fig3", "fig4", "fig5", "fig6", "fig7", "fig8",
         "fig10"}  # fmt: skip


def record(method: str, seed: int, status: str = "ok", acc: float | None = None, time_s: float = 60.0,
           mem: float | None = None, params: int = 1000, **kw) -> dict:  # fmt: skip
    return {
        "task": "classification", "model": "vit_base_in21k", "peft": method, "data": "cifar10", "seed": seed,
        "name": "cls_cifar10", "status": status, "metric_name": "accuracy", "metric_direction": "max",
        "metric_best": acc, "metrics": {"accuracy": acc}, "time_train_s": time_s - 10, "time_val_s": 10.0,
        "time_total_s": time_s, "peak_mem_bytes": None if mem is None else mem * 40e9, "peak_mem_frac": mem,
        "device": "NVIDIA A100-SXM4-40GB", "peft_params": params, "head_params": 7690,
        "trainable_params": params + 7690, "total_params": 85_806_346, "adapted_layers": 72, **kw,
    }  # fmt: skip


def write(runs: Path, rec: dict | str, method: str, seed: int) -> Path:
    path = runs / method / f"seed{seed}" / "trainer.max_epochs=10" / "result.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(rec if isinstance(rec, str) else json.dumps(rec))
    return path


@pytest.fixture
def runs(tmp_path: Path) -> tuple[Path, Path]:
    """onelora: 3 ok + 1 corrupt JSON; lora: 2 ok, 1 diverged, seed 3 missing; full: 1 ok, 1 failed, 2 missing;
    vera: not in the manifest."""
    d = tmp_path / "multiruns" / "cls_cifar10"
    for seed, acc, t in [(0, 0.90, 600), (1, 0.92, 660), (2, 0.94, 720)]:
        write(d, record("onelora", seed, acc=acc, time_s=t, mem=0.25, params=1000), "onelora", seed)
    corrupt = write(d, '{"task": "classification", "status": "ok", "metric_be', "onelora", 3)
    for seed, acc in [(0, 0.95), (1, 0.97)]:
        write(d, record("lora", seed, acc=acc, time_s=1200, mem=0.10, params=3000), "lora", seed)
    write(d, record("lora", 2, status="diverged", error="loss is nan at step 12", params=3000), "lora", 2)
    write(d, record("full", 0, acc=0.99, time_s=1800, mem=0.40, params=86_000_000), "full", 0)
    write(d, record("full", 1, status="failed", error="OutOfMemoryError: CUDA out of memory", params=86_000_000),
          "full", 1)  # fmt: skip
    write(d, record("vera", 0, acc=0.5), "vera", 0)
    return d, corrupt


def manifest_for(runs_dir: Path, **kw):
    spec = {"title": "Test", "experiment": "cls_cifar10", "transfer": "CIFAR-10", "runs_dir": str(runs_dir),
            "methods": ["onelora", "lora", "full"], "seeds": [0, 1, 2, 3],
            "metric": {"name": "accuracy", "direction": "max", "scale": 100}, "paper_table": "tableS9", **kw}  # fmt: skip
    return parse_manifest(spec, "test")


def test_summary_mean_std_and_counts(runs, tmp_path):
    d, _ = runs
    rep = write_report([d], tmp_path / "out", manifest_for(d))
    s = rep.summary.set_index("method")
    assert list(s.index) == ["onelora", "lora", "full"]
    # by hand: accuracies 90, 92, 94 -> mean 92, sample std sqrt((4 + 0 + 4) / 2) = 2
    assert s.loc["onelora", "metric_mean"] == pytest.approx(92.0)
    assert s.loc["onelora", "metric_std"] == pytest.approx(2.0)
    assert s.loc["onelora", "time_min_mean"] == pytest.approx(11.0)  # 600, 660, 720 s
    assert s.loc["lora", "metric_mean"] == pytest.approx(96.0)
    assert s.loc["lora", "metric_std"] == pytest.approx(math.sqrt(2.0))  # 95, 97
    assert s.loc["full", "metric_mean"] == pytest.approx(99.0) and math.isnan(s.loc["full", "metric_std"])
    assert s.loc["lora", "peak_mem_frac_mean"] == pytest.approx(0.10)
    assert (s.n_ok.tolist(), s.n_failed.tolist(), s.n_missing.tolist()) == ([3, 2, 1], [1, 1, 1], [0, 1, 2])
    assert s.loc["full", "peft_params"] == 86_000_000
    csv = pd.read_csv(tmp_path / "out" / "summary.csv")
    for col in ["method", "n_ok", "n_failed", "metric_mean", "metric_std", "time_min_mean", "peak_mem_frac_mean",
                "peft_params", "transfer", "paper_metric_mean", "paper_metric_std", "paper_time",
                "paper_memory_pct", "paper_params"]:  # fmt: skip
        assert col in csv.columns, col
    paper = csv.set_index("method")
    assert paper.loc["onelora", "paper_metric_mean"] == 97.7 and paper.loc["full", "paper_params"] == 343_190_000


def test_table_styles_direction_aware(runs, tmp_path):
    d, _ = runs
    write_report([d], tmp_path / "out", manifest_for(d))
    md = (tmp_path / "out" / "table.md").read_text()
    # ours: time 11 < 20 < 30 min (lower best); accuracy 99 > 96 > 92 (higher best); memory 25/10/40 %;
    # params 1.00K < 3.00K < 86.00M. Paper (S9): time 17/33/22, accuracy 97.7/98.1/98.3, memory 6/7/10.
    rows = {line.split(" | ")[0].strip("| "): line for line in md.splitlines() if line.startswith("| ")}
    assert rows["1LoRA"] == ("| 1LoRA | **11** | *92.00 ± 2.0* | <u>25</u> | **1.00K** | 3/4 | **17** | "
                             "*97.7 ± 0.186* | **6** | **331.78K** |")  # fmt: skip
    assert rows["LoRA"] == ("| LoRA | <u>20</u> | <u>96.00 ± 1.4</u> | **10** | <u>3.00K</u> | 2/4 | *33* | "
                            "<u>98.1 ± 0.058</u> | <u>7</u> | <u>663.55K</u> |")  # fmt: skip
    assert rows["All"] == ("| All | *30* | **99.00** | *40* | *86.00M* | 1/4 | <u>22</u> | **98.3 ± 0.0755** | "
                           "*10* | *343.19M* |")  # fmt: skip
    assert "Paper: Accuracy [%] ↑" in rows["Method"]
    tex = (tmp_path / "out" / "table.tex").read_text()
    assert "1LoRA & \\textbf{11} & \\textit{92.00 $\\pm$ 2.0} & \\underline{25} & \\textbf{1.00K} & 3/4" in tex
    assert "All & \\textit{30} & \\textbf{99.00} &" in tex
    assert "\\multicolumn{4}{c}{Paper (Table S9)}" in tex


def test_coverage_lists_every_problem(runs, tmp_path):
    d, corrupt = runs
    rep = write_report([d], tmp_path / "out", manifest_for(d))
    cov = "\n".join(rep.coverage)
    assert "6 of 12 expected runs are ok" in cov
    assert f"unreadable: onelora seed 3 at {corrupt}" in cov
    assert "missing: lora seed(s) 3 (no result.json)" in cov
    assert "missing: full seed(s) 2, 3 (no result.json)" in cov
    assert "diverged: lora seed 2 at" in cov and "loss is nan" in cov
    assert "failed: full seed 1 at" in cov and "CUDA out of memory" in cov
    assert "ignored 1 record(s) of method vera" in cov
    md = (tmp_path / "out" / "table.md").read_text()
    assert "## Coverage" in md and str(corrupt) in md and "missing: full seed(s) 2, 3" in md


def test_figures_are_valid_pngs(runs, tmp_path):
    d, _ = runs
    write_report([d], tmp_path / "out", manifest_for(d))
    for name in ("bubble.png", "memory.png"):
        path = tmp_path / "out" / name
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100


def test_without_manifest_and_all_failed(tmp_path):
    d = tmp_path / "runs"
    write(d, record("onelora", 0, acc=0.8), "onelora", 0)
    write(d, record("onelora", 1, acc=0.9), "onelora", 1)
    write(d, record("lora", 0, status="failed", error="boom"), "lora", 0)
    rep = write_report([d], tmp_path / "out")
    assert {"data", "method", "n_ok"} <= set(rep.summary.columns)
    s = rep.summary.set_index("method")
    assert s.loc["onelora", "metric_mean"] == pytest.approx(85.0) and s.loc["lora", "n_ok"] == 0
    assert any("missing: lora seed(s) 1" in c for c in rep.coverage)
    assert all((tmp_path / "out" / f).is_file() for f in ("table.md", "table.tex", "bubble.png", "memory.png"))


def test_cli_bad_input_is_one_line(runs, tmp_path, capsys):
    main = runpy.run_path(str(ROOT / "scripts" / "report.py"), run_name="report")["main"]
    assert main([str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("report: no result.json found under") and "\n" not in err
    assert main(["--experiment", "no_such_item", "--out", str(tmp_path / "o")]) != 0
    assert "unknown experiment manifest 'no_such_item'" in capsys.readouterr().err
    (tmp_path / "file").write_text("")  # --out below a file: one line, not a NotADirectoryError traceback
    assert main([str(runs[0]), "--out", str(tmp_path / "file" / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith(f"report: cannot write the report to {tmp_path / 'file' / 'o'} (Not a directory")
        and "\n" not in err
    )


def test_paper_table_s9_shows_the_papers_numbers(tmp_path):
    files = write_paper_figures(load_manifest("fig6"), tmp_path)
    assert {f.name for f in files} == {"table.md", "table.tex", "bubble.png", "memory.png"}
    md = (tmp_path / "table.md").read_text()
    s9 = pd.read_csv(PAPER / "tableS9.csv", dtype=str, keep_default_na=False)
    for _, r in s9.iterrows():
        assert f"{r.metric_mean} ± {r.metric_std}" in md, r.method
        assert r.params_printed in md
    assert "| 1LoRA | <u>17</u> | 97.7 ± 0.186 | **6** | <u>331.78K</u> |" in md
    assert "| All | 22 | **98.3 ± 0.0755** | 10 | 343.19M |" in md
    # Table 2 prints only metrics: a table, no figures; its printed strings keep their trailing zeros
    files = write_paper_figures(load_manifest("table2"), tmp_path / "t2")
    assert {f.name for f in files} == {"table.md", "table.tex"}
    assert "| All | **0.210 ± 0.00064** | **0.0571 ± 0.00033** |" in (tmp_path / "t2" / "table.md").read_text()


def test_format_params_like_the_paper():
    assert [format_params(n) for n in (221_184, 1_359_872, 335_320_000, 512, None)] == [
        "221.18K", "1.36M", "335.32M", "512", "–"
    ]  # fmt: skip


def test_manifests_cover_the_paper_items():
    manifests = {p.stem: load_manifest(p) for p in manifest_paths()}
    assert set(manifests) == ITEMS | {"demo", "mini", "real_minilm", "real_smollm2"}  # paper items, make demo/mini/real
    peft_names = {p.stem for p in (ROOT / "configs" / "peft").glob("*.yaml")}
    for name, m in manifests.items():
        assert set(m.methods) <= peft_names, name
        if m.paper_table is None:  # the demo has no paper table
            continue
        paper = pd.read_csv(PAPER / f"{m.paper_table}.csv")
        assert set(paper.method) == set(m.methods), name  # every method the paper reports, no other
        assert set(paper.transfer) == set(m.transfers), name
        assert set(paper.metric_name) == {x.name for x in m.metrics}, name
    assert load_manifest("fig6_cifar10").name == "fig6"  # DESIGN.md's `make report EXP=fig6_cifar10`
    assert manifests["fig5"].seeds == (0,) and manifests["fig5"].time_unit == "h"
    with pytest.raises(ManifestError, match="unknown key"):
        parse_manifest({"experiment": "x", "methods": ["lora"], "metric": "rmse", "metirc": 1}, "bad")


def test_sweep_prints_the_multirun_commands(capsys):
    main = runpy.run_path(str(ROOT / "scripts" / "sweep.py"), run_name="sweep")["main"]
    assert main(["experiments/fig6.yaml", "--print", "hydra/launcher=slurm"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    assert out[0].endswith(" run.py -m experiment=cls_cifar10 "
                           "peft=mora1,mora6,bitfit,difffit,lora,vera,dora,onelora,onelora_norms,full "
                           "seed=0,1,2,3 hydra/launcher=slurm")  # fmt: skip
    assert main(["table2", "--print"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[3] for line in out] == ["experiment=mde_kitti2nyu", "experiment=mde_nyu2kitti"]


def test_figures_notebook_executes():
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    path = ROOT / "notebooks" / "figures.ipynb"
    nb = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
                            ).execute()  # fmt: skip
    images = [
        o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if "image/png" in o.get("data", {})
    ]
    assert len(images) >= 20  # the paper's 11 bubble + memory pairs


def test_one_configuration_per_method_or_a_conflict(tmp_path):
    """The same method and seed under two override sets: the manifest's set is used and the other set aside; with
    neither set the manifest's, nothing is averaged and the conflict is listed (never the newest chosen). A boolean
    spelled `False` (a multirun's record) and `false` (a single run's) is one setting."""
    d = tmp_path / "runs"
    base = ["experiment=cls_cifar10", "peft=onelora"]
    for seed, acc, flag in [(0, 0.90, "False"), (1, 0.92, "false")]:
        overrides = [*base, f"seed={seed}", f"trainer.enable_progress_bar={flag}"]
        write(d, record("onelora", seed, acc=acc, overrides=overrides), "onelora", seed)
    other = record("onelora", 0, acc=0.50, overrides=[*base, "task.optimizer.lr=0.01", "seed=0",
                                                      "paths.log_dir=/elsewhere", "trainer.enable_progress_bar=false"])  # fmt: skip
    path = d / "onelora" / "seed0" / "task.optimizer.lr=0.01" / "result.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(other))  # newest, ok, but another learning rate
    flag = ["trainer.enable_progress_bar=false"]
    rep = write_report([d], tmp_path / "out", manifest_for(d, methods=["onelora"], overrides=flag))
    s = rep.summary.set_index("method")
    assert s.loc["onelora", "metric_mean"] == pytest.approx(91.0) and s.loc["onelora", "n_ok"] == 2
    assert any("set aside 1 record(s) of onelora" in c and "task.optimizer.lr=0.01" in c for c in rep.coverage)

    # the manifest asks for lr=0.001: neither set is it, so neither is averaged
    lr = [*flag, "task.optimizer.lr=0.001"]
    rep = write_report([d], tmp_path / "out2", manifest_for(d, methods=["onelora"], overrides=lr))
    s = rep.summary.set_index("method")
    assert s.loc["onelora", "n_ok"] == 0 and math.isnan(s.loc["onelora", "metric_mean"])
    cov = "\n".join(rep.coverage)
    assert "conflict: onelora has ok runs under 2 configurations" in cov
    assert "[trainer.enable_progress_bar=false] seeds 0, 1" in cov
    assert "[task.optimizer.lr=0.01 trainer.enable_progress_bar=false] seeds 0" in cov


def test_calibration_names_the_requested_methods_without_runs(tmp_path, capsys):
    import torch

    run = tmp_path / "runs" / "lora" / "seed0"
    run.mkdir(parents=True)
    (run / "result.json").write_text(json.dumps(record("lora", 0, acc=0.5)))
    torch.save({"confidence": torch.tensor([0.9, 0.6]), "correct": torch.tensor([1.0, 0.0]),
                "loss": torch.tensor([0.1, 0.9])}, run / "predictions.pt")  # fmt: skip
    main = runpy.run_path(str(ROOT / "scripts" / "calibration.py"), run_name="calibration")["main"]
    assert main([str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--methods", "full,lora,onelora"]) == 0
    err = capsys.readouterr().err
    assert "no run with predictions.pt for full, onelora under" in err and "(found: lora)" in err
    assert (tmp_path / "out" / "calibration.csv").read_text().splitlines()[1].startswith("lora,2,")


def test_make_report_takes_a_manifest_by_path():
    out = subprocess.run(["make", "-n", "report", "EXP=some/where/fig6.yaml"], capture_output=True,
                         text=True, cwd=ROOT, timeout=60).stdout  # fmt: skip
    assert "scripts/report.py  --experiment some/where/fig6.yaml --out results/fig6" in out


def test_bubble_plot_has_a_size_legend(runs, tmp_path):
    from onelora.report import figures, ours_view
    from onelora.report.plots import BUBBLE, plt

    d, _ = runs
    m = manifest_for(d)
    rep = write_report([d], tmp_path / "out", m)
    bubble, memory = figures(ours_view(rep.summary, m), None, m)
    legend = bubble.axes[0].get_legend()
    # params 1.00K (onelora), 3.00K (lora), 86M (full, capped): area = BUBBLE x params / 3000 (the largest uncapped);
    # round references below 3000, below sqrt(1000 x 3000) = 1732 and below 1000: 2K and 1K
    assert legend.get_title().get_text() == "trainable params"
    assert [t.get_text() for t in legend.get_texts()] == ["2K", "1K"]
    sizes = [h.get_sizes()[0] for h in legend.legend_handles]
    assert sizes == pytest.approx([BUBBLE * 2000 / 3000, BUBBLE * 1000 / 3000])
    plt.close(bubble)
    plt.close(memory)


def test_cpu_runs_show_seconds_and_peak_rss(tmp_path):
    """Runs under a minute are timed in seconds; CPU runs (no accelerator memory) show their peak RSS, labelled."""
    from onelora.report import figures, ours_view
    from onelora.report.plots import plt

    d = tmp_path / "runs"
    for method, t, rss in [("onelora", 30.0, 2e9), ("lora", 45.0, 3e9)]:
        for seed in (0, 1):
            write(d, record(method, seed, acc=0.9, time_s=t, peak_rss_bytes=rss), method, seed)
    m = manifest_for(d, methods=["onelora", "lora"], seeds=[0, 1], paper_table=None)
    rep = write_report([d], tmp_path / "out", m)
    md = (tmp_path / "out" / "table.md").read_text()
    assert "Time [s] ↓" in md and "Peak RSS [GB] ↓" in md and "Memory [%]" not in md
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in md.splitlines() if line.startswith("| ")}
    assert rows["1LoRA"][1:2] == ["**30**"] and rows["LoRA"][1:2] == ["<u>45</u>"]  # seconds, not 0.5 / 0.75 min
    assert "**2**" in rows["1LoRA"] and "<u>3</u>" in rows["LoRA"]  # GB
    bubble, memory = figures(ours_view(rep.summary, m), None, m)
    assert bubble.axes[0].get_xlabel() == "Time [s]"
    ax = memory.axes[0]
    assert "peak RSS [GB]" in ax.get_ylabel() and [b.get_height() for b in ax.patches] == pytest.approx([2.0, 3.0])
    plt.close(bubble)
    plt.close(memory)


def test_run_folder_names_spell_booleans_one_way():
    from onelora.run.record import run_dirname

    # a multirun writes what Hydra's sweeper prints (False), a single run what was typed (false): one name for both
    assert run_dirname("model.pretrained=null,trainer.enable_progress_bar=False") == (
        "model.pretrained=null,trainer.enable_progress_bar=false"
    )
    assert run_dirname("a=True,b=Falsey,c=False") == "a=true,b=Falsey,c=false"
    hydra = yaml.safe_load((ROOT / "configs" / "hydra" / "default.yaml").read_text())
    assert hydra["run"]["dir"].endswith("${run_dirname:${hydra.job.override_dirname}}")
    assert hydra["sweep"]["subdir"].endswith("${run_dirname:${hydra.job.override_dirname}}")


def test_committed_paper_figures_are_what_make_paper_figures_writes(tmp_path):
    """results/paper_figures/ regenerated from results/paper/ and experiments/ equals the committed files (text
    exactly; images pixel for pixel up to anti-aliasing). On a failure: `make paper-figures` and commit."""
    import numpy as np

    main = runpy.run_path(str(ROOT / "scripts" / "paper_figures.py"), run_name="paper_figures")["main"]
    assert main(["--out", str(tmp_path)]) == 0
    committed = ROOT / "results" / "paper_figures"
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert written == sorted(str(p.relative_to(committed)) for p in committed.rglob("*") if p.is_file())
    for rel in written:
        new, old = tmp_path / rel, committed / rel
        if new.suffix == ".png":
            with Image.open(new) as a, Image.open(old) as b:
                a, b = np.asarray(a.convert("RGB"), float), np.asarray(b.convert("RGB"), float)
            assert a.shape == b.shape and np.abs(a - b).mean() < 0.5, f"{rel} differs: run make paper-figures"
        else:
            assert new.read_text() == old.read_text(), f"{rel} differs: run make paper-figures"
