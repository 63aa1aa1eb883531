"""`make mini` (experiments/mini.yaml): the manifest, the lr choice, the holdout split, and a 1-epoch 1-seed run."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest
import yaml
from helpers import ROOT, hydra_cfg

from onelora.commands.launch import commands, selection_commands
from onelora.data.classification import DigitsDataModule
from onelora.report import load_manifest, write_report
from onelora.report.manifest import parse_manifest
from onelora.report.tuning import choose

TABLE_S9 = ["mora1", "mora6", "bitfit", "difffit", "lora", "vera", "dora", "onelora", "onelora_norms", "full"]


def _runs(cmds) -> set[tuple[str, str, int]]:  # noqa: ANN001
    """(experiment, method, seed) of every run the commands launch."""
    out = set()
    for c in cmds:
        args = dict(a.split("=", 1) for a in c.argv[3:] if "=" in a)
        for m in args["peft"].split(","):
            out |= {(args["experiment"], m, int(s)) for s in args["seed"].split(",")}
    return out


def test_mini_manifest_composes_and_its_runs_are_methods_times_seeds(tmp_path: Path) -> None:
    m = load_manifest("mini")
    assert list(m.methods) == [*TABLE_S9, "head"] and m.seeds == (0, 1, 2, 3)
    assert [g.experiment for g in m.groups] == ["mini_one_lr", "mini_tuned"] and m.tune.group == "mini_tuned"
    chosen = {method: 1e-2 if i % 2 else 1e-3 for i, method in enumerate(m.methods)}
    for jobs in (1, 2):
        cmds = commands(m, [], "python", jobs, chosen)
        expected = {(g.experiment, meth, s) for g in m.groups for meth in m.methods for s in m.seeds}
        assert _runs(cmds) == expected and sum(c.runs for c in cmds) == len(expected)
        sel = selection_commands(m, [], "python", jobs)
        assert _runs(sel) == {("mini_select", meth, 100) for meth in m.methods}
        assert all("task.optimizer.lr=0.001,0.003,0.01,0.03" in c.argv for c in sel)
    tuned = [c for c in commands(m, [], "python", 1, chosen) if "experiment=mini_tuned" in c.argv]
    assert {a for c in tuned for a in c.argv if a.startswith("task.optimizer.lr=")} == {
        "task.optimizer.lr=0.01", "task.optimizer.lr=0.001"}  # fmt: skip
    for exp in ("mini_one_lr", "mini_tuned", "mini_select"):
        with hydra_cfg(tmp_path, f"experiment={exp}") as cfg:
            assert cfg.name == exp and cfg.model.name == "vit_digits" and cfg.task.optimizer.lr == 1e-2
            assert cfg.data.module.get("holdout_fraction") == (0.2 if exp == "mini_select" else None)


def test_the_holdout_split_is_carved_from_the_training_part_only() -> None:
    plain, held = DigitsDataModule(classes=[5, 6], batch_size=4), DigitsDataModule(classes=[5, 6], batch_size=4,
                                                                                    holdout_fraction=0.2)  # fmt: skip
    plain.setup(), held.setup()

    def rows(ds) -> set[bytes]:  # noqa: ANN001
        return {x.numpy().tobytes() + bytes([int(y)]) for x, y in zip(*ds.tensors)}

    test, train = rows(plain.val_set), rows(plain.train_set)
    assert rows(held.val_set) | rows(held.train_set) == train and not rows(held.val_set) & test
    assert len(held.val_set) == pytest.approx(0.2 * len(plain.train_set), abs=1)


def _record(root: Path, method: str, lr: float, best: float, seed: int = 100) -> None:
    d = root / method / f"seed{seed}" / f"task.optimizer.lr={lr:g}"
    d.mkdir(parents=True)
    (d / "result.json").write_text(json.dumps({"peft": method, "seed": seed, "status": "ok", "metric_best": best,
                                               "overrides": [f"task.optimizer.lr={lr:g}"]}))  # fmt: skip


def test_each_method_gets_its_best_value_on_the_selection_runs(tmp_path: Path) -> None:
    spec = yaml.safe_load((ROOT / "experiments" / "mini.yaml").read_text())
    spec["tune"]["runs_dir"] = str(tmp_path)
    m = parse_manifest(spec, "mini")
    _record(tmp_path, "lora", 1e-3, 0.5), _record(tmp_path, "lora", 3e-3, 0.7), _record(tmp_path, "lora", 1e-2, 0.6)
    _record(tmp_path, "onelora", 1e-2, 0.8), _record(tmp_path, "onelora", 3e-2, 0.8)  # a tie: the smaller value
    _record(tmp_path, "bitfit", 1e-1, 0.9)  # off the grid: ignored
    _record(tmp_path, "bitfit", 1e-3, 0.9, seed=0)  # not a selection seed: ignored
    assert choose(m) == {"lora": 3e-3, "onelora": 1e-2}


def test_a_one_epoch_one_seed_mini_runs_and_reports_every_method(tmp_path: Path, monkeypatch, capsys) -> None:  # noqa: ANN001
    spec = yaml.safe_load((ROOT / "experiments" / "mini.yaml").read_text())
    spec |= {"seeds": [0], "tune": {**spec["tune"], "grid": [1e-2]}}
    path = tmp_path / "mini1.yaml"
    path.write_text(yaml.safe_dump(spec))
    monkeypatch.setenv("ONELORA_ROOT", str(tmp_path))  # runs and data cache under tmp_path
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    sweep = runpy.run_path(str(ROOT / "scripts" / "sweep.py"), run_name="sweep")["main"]
    tiny = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1"]
    assert sweep([str(path), "--progress", *tiny]) == 0
    err = capsys.readouterr().err
    finished = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("ok ")]
    assert len(finished) == 11 * 3  # one line per run: selection, one lr, tuned
    assert "pre-training" not in err and "chosen task.optimizer.lr:" in err  # the committed source model
    manifest = load_manifest(path)
    report = write_report([d for g in manifest.groups for d in g.dirs], tmp_path / "report", manifest)
    assert (report.summary.n_ok == 1).all() and len(report.summary) == 2 * 11
    text = (tmp_path / "report" / "table.md").read_text()
    for label in ("MoRA", "BitFit", "DiffFit", "LoRA", "VeRA", "DoRA", "1LoRA", "All", "Head only"):
        assert text.count(f"| {label}") >= 4, label  # both protocols, the selection and the ranking
    assert "## Selection of `task.optimizer.lr`" in text and "## Ranking beside the paper's tableS9" in text


def test_parallel_multiruns_wait_for_the_shared_pretraining_and_report_to_one_bar(tmp_path: Path) -> None:
    import io
    import sys

    from onelora.commands.launch import Command, execute
    from onelora.run.progress import SweepDisplay

    def fake(label: str, pretrain: bool, rc: int = 0) -> Command:
        # a stand-in multirun: writes when it started, then the events a run writes (onelora.run.progress.emit)
        code = (
            "import time; from onelora.run.progress import emit\n"
            f"open({str(tmp_path / label)!r}, 'w').write(repr(time.time()))\n"
            + ("emit('start', pretraining=True); time.sleep(0.6); emit('end', pretraining=True, best=0.9)\n"
               if pretrain else "")
            + f"emit('start', peft={label!r}, seed=0); emit('end', peft={label!r}, seed=0, status='ok', best=0.5)\n"
            f"raise SystemExit({rc})"
        )  # fmt: skip
        return Command([sys.executable, "-c", code], 1, label, tmp_path / f"{label}.log")

    stream = io.StringIO()
    display = SweepDisplay(total=3, scale=100, stream=stream)
    rc = execute([fake("first", True), fake("second", False), fake("third", False, rc=3)], 2, display)
    display.close()
    assert rc == 3  # the first failure's exit status; the others still ran
    started = {k: float((tmp_path / k).read_text()) for k in ("first", "second", "third")}
    assert started["second"] >= started["first"] + 0.6  # not before the first one's pre-training ended
    lines = [line for line in stream.getvalue().replace("\r", "\n").splitlines() if line.startswith("ok ")]
    assert sorted(line.split()[1] for line in lines) == ["first", "second", "third"]
    assert "exited with 3" in stream.getvalue() and str(tmp_path / "third.log") in stream.getvalue()


def test_the_ranking_is_shown_beside_another_committed_report_re_ranked_among_the_same_methods(
    tmp_path: Path,
) -> None:
    import dataclasses

    import pandas as pd

    from onelora.report.manifest import load_manifest
    from onelora.report.tuning import ranking_frame, ranking_markdown

    manifest = load_manifest("real_minilm")
    other = tmp_path / "other"
    other.mkdir()
    # another report's ranks among 10 methods; mora1 (its rank 1) is missing from it, and head has none
    ranks = {"mora6": 2, "bitfit": 3, "difffit": 4, "lora": 5, "vera": 6, "dora": 7, "onelora": 8,
             "onelora_norms": 9, "full": 10, "head": None}  # fmt: skip
    pd.DataFrame(  # its own beside-ranks (a column "<folder>: ... rank") are not shown again
        {
            "method": list(ranks),
            "lr per method": 0.0,
            "lr per method rank": list(ranks.values()),
            "results/mini: lr per method rank": 1.0,
        }  # fmt: skip
    ).to_csv(other / "ranking.csv", index=False)
    manifest = dataclasses.replace(manifest, rank_beside=(str(other), str(tmp_path / "absent")))
    summary = pd.DataFrame(
        [
            {"transfer": t, "method": m, "metric_mean": float(i)}
            for t in manifest.transfers
            for i, m in enumerate(manifest.methods)
        ]  # fmt: skip
    )
    frame = ranking_frame(summary, manifest).set_index("method")
    beside = frame[f"{other}: lr per method rank"]
    assert beside.isna()[["mora1", "head"]].all()
    assert beside.drop(["mora1", "head"]).tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9]  # re-ranked among the nine
    text = ranking_markdown(frame.reset_index(), manifest)
    assert f"rank in {other}: lr per method" in text and "results/mini: lr per method" not in text
    assert f"No ranking in {tmp_path / 'absent'} (its ranking.csv is missing)." in text
