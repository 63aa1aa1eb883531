"""The training pipeline on CPU: records, frozen weights, resume, determinism, loggers, bad input."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from helpers import CHILD_PATH, ROOT, hydra_cfg, write_cifar10

from onelora.run.build import build_peft_model
from onelora.run.record import effective_status
from onelora.run.train import train

RECORD_FIELDS = {
    "task", "model", "peft", "data", "seed", "status", "metric_name", "metric_direction", "metric_best", "metrics",
    "time_train_s", "time_val_s", "time_total_s", "peak_mem_bytes", "peak_mem_frac", "device", "peft_params",
    "head_params", "trainable_params", "total_params", "adapted_layers", "overrides", "git_sha", "versions",
    "started_at", "finished_at",
}  # fmt: skip


@pytest.fixture
def cifar(tmp_path: Path) -> Path:
    write_cifar10(tmp_path / "data" / "cifar_synthetic")
    return tmp_path


def smoke(tmp: Path, *overrides: str):
    with hydra_cfg(tmp, "experiment=smoke_classification", *overrides) as cfg:
        return train(cfg)


@pytest.mark.parametrize("method", ["onelora", "bitfit"])
def test_smoke_classification_trains_only_the_method(cifar: Path, method: str) -> None:
    with hydra_cfg(cifar, "experiment=smoke_classification", f"peft={method}") as cfg:
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        before, _ = build_peft_model(cfg)  # the same seeded build the run makes
        record, task = train(cfg)
    assert RECORD_FIELDS <= set(record), RECORD_FIELDS - set(record)
    assert record["status"] == "ok" and record["metric_name"] == "accuracy" and record["metric_direction"] == "max"
    assert 0.0 <= record["metric_best"] <= 1.0 and "accuracy" in record["metrics"]
    assert record["peak_mem_bytes"] is None and record["device"] == "cpu" and record["peak_rss_bytes"] > 0
    assert record["time_total_s"] == pytest.approx(record["time_train_s"] + record["time_val_s"])
    # tiny ViT: 2 blocks of q,k,v,o (32->32), fc1 (32->64), fc2 (64->32); head 32*10+10
    assert record["peft_params"] == 2 * (4 * 32 + 64 + 32) and record["head_params"] == 330
    assert record["adapted_layers"] == 12
    assert json.loads((cifar / "run" / "result.json").read_text()) == json.loads(json.dumps(record, default=str))

    after = dict(task.model.named_parameters())
    for name, p in before.named_parameters():
        if p.requires_grad:
            assert not torch.equal(p, after[name]), f"{name} should have trained"
        else:
            assert torch.equal(p, after[name]), f"frozen {name} changed"
    trained = {n for n, p in before.named_parameters() if p.requires_grad}
    expected = {n for n in trained if n.startswith("classifier.")}
    assert expected and trained - expected, trained
    suffix = ".adapter.b" if method == "onelora" else ".bias"
    assert all(n.endswith(suffix) for n in trained - expected)


def test_timm_vit_alternative_trains(cifar: Path) -> None:
    """model=vit_*_timm: timm's fused-qkv ViT through the same task (its forward returns a tensor)."""
    record, _ = smoke(cifar, "peft=onelora", "model=vit_tiny_timm")
    # 2 blocks of qkv (32->96), proj (32->32), fc1 (32->128), fc2 (128->32)
    assert record["status"] == "ok" and record["peft_params"] == 2 * (96 + 32 + 128 + 32)
    assert record["adapted_layers"] == 8


def test_same_seed_same_metrics(cifar: Path) -> None:
    a, _ = smoke(cifar / "a", "peft=onelora", f"paths.data_dir={cifar / 'data'}", f"paths.output_dir={cifar / 'a'}")
    b, _ = smoke(cifar / "b", "peft=onelora", f"paths.data_dir={cifar / 'data'}", f"paths.output_dir={cifar / 'b'}")
    assert a["metrics"] == b["metrics"] and a["metric_best"] == b["metric_best"]


def test_finished_run_is_skipped_and_rerun_redoes_it(cifar: Path, capsys: pytest.CaptureFixture) -> None:
    first, task = smoke(cifar, "peft=onelora")
    capsys.readouterr()
    again, task2 = smoke(cifar, "peft=onelora")
    assert task2 is None and again["finished_at"] == first["finished_at"]
    said = f"already done: {cifar / 'run' / 'result.json'} (accuracy={first['metric_best']:.4f}); rerun=true to redo"
    assert capsys.readouterr().out.strip() == said  # rounded as the summary line prints it, not 0.580357134...
    redo, task3 = smoke(cifar, "peft=onelora", "rerun=true")
    assert task3 is not None and redo["status"] == "ok"


def test_a_damaged_final_record_is_said_and_its_metrics_restored(cifar: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A record damaged after the last checkpoint (invalid JSON; `running` with a dead pid): the re-run trained
    nothing and wrote `ok` with `metrics: {}`. Now one line names the record and the metrics come back, from the
    checkpoint, or from one validation where the checkpoint predates them."""
    first, _ = smoke(cifar, "peft=onelora")
    assert first["metrics"]["accuracy"] is not None
    path = cifar / "run" / "result.json"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid no process has any more
    ckpt = next((cifar / "run" / "checkpoints").glob("epoch=*.ckpt"))

    def without_metrics() -> None:  # a checkpoint written before the metrics were kept in it
        state = torch.load(ckpt, weights_only=False)
        del state["onelora"]["metrics"]
        torch.save(state, ckpt)
        path.write_text("{")

    damages = {
        "is damaged (not a JSON record)": lambda: path.write_text('{"status": "ok", "metr'),
        f"says running, but its process {gone.pid} is gone": lambda: path.write_text(
            json.dumps({**first, "status": "running", "pid": gone.pid, "host": socket.gethostname()})
        ),
        "is damaged (not a JSON record); the run resumes": without_metrics,
    }
    for says, damage in damages.items():
        damage()
        caplog.clear()
        again, task = smoke(cifar, "peft=onelora")
        assert task is not None and again["status"] == "ok"
        assert again["metrics"] == pytest.approx(first["metrics"], abs=1e-6), says
        assert again["metric_best"] == first["metric_best"]
        lines = [r.getMessage() for r in caplog.records if "resumes from its last checkpoint" in r.getMessage()]
        assert len(lines) == 1 and lines[0].startswith(f"{path} ") and says in lines[0], lines


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": CHILD_PATH, **(env or {})},
        timeout=300,
    )


def test_resume_after_kill_matches_uninterrupted(cifar: Path) -> None:
    common = [
        "experiment=smoke_classification",
        "peft=onelora",
        "trainer.max_epochs=3",
        f"paths.data_dir={cifar / 'data'}",
    ]
    killed = cifar / "killed"
    args = [*common, f"hydra.run.dir={killed}", f"paths.output_dir={killed}"]
    proc = _cli(*args, "+callbacks.kill._target_=helpers.KillAtEpochStart", "+callbacks.kill.epoch=2")
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert (killed / "checkpoints" / "last.ckpt").is_file()
    killed_record = json.loads((killed / "result.json").read_text())  # written at the start, never marked ok
    assert killed_record["status"] == "running" and killed_record["host"] == socket.gethostname()
    assert effective_status(killed_record) == "interrupted"  # its pid is gone on this host
    proc = _cli(*args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    resumed = json.loads((killed / "result.json").read_text())
    straight, _ = smoke(cifar / "straight", *common, f"paths.output_dir={cifar / 'straight'}")
    assert resumed["status"] == "ok"
    assert resumed["metrics"] == pytest.approx(straight["metrics"], abs=1e-6)
    assert resumed["metric_best"] == pytest.approx(straight["metric_best"], abs=1e-6)


def test_divergence_is_recorded(cifar: Path) -> None:
    record, _ = smoke(cifar, "peft=onelora", "task.optimizer.lr=1e30")
    assert record["status"] == "diverged" and "lower the learning rate" in record["error"]


def test_ctrl_c_is_recorded_as_interrupted(cifar: Path) -> None:
    """Lightning turns Ctrl-C into a graceful stop and sys.exit(1): the record said `failed`, 'SystemExit: 1'."""
    import signal

    handler = signal.getsignal(signal.SIGINT)  # Lightning ignores SIGINT from then on: restored for later tests
    ctrl_c = ["+callbacks.ctrl_c._target_=helpers.SignalAtStep", "+callbacks.ctrl_c.step=3",
              "+callbacks.ctrl_c.signal=SIGINT"]  # fmt: skip
    try:
        with pytest.raises(SystemExit) as stop:
            smoke(cifar, "peft=onelora", *ctrl_c)
    finally:
        signal.signal(signal.SIGINT, handler)
    assert stop.value.code == 130
    record = json.loads((cifar / "run" / "result.json").read_text())
    assert record["status"] == "interrupted" and "Ctrl-C" in record["error"] and "re-running" in record["error"]
    assert effective_status(record) == "interrupted"


def test_ctrl_c_during_the_pretraining_is_interrupted_not_failed(tmp_path: Path) -> None:
    """Ctrl-C on `make demo` while the source model pre-trains: the fine-tuning run's record said `failed`,
    'SystemExit: 130' (the pre-training's own exit code seen as an error)."""
    import signal

    handler = signal.getsignal(signal.SIGINT)
    ctrl_c = "+model.pretrain_overrides=['+callbacks.ctrl_c._target_=helpers.SignalAtStep','+callbacks.ctrl_c.step=1','+callbacks.ctrl_c.signal=SIGINT']"  # noqa: E501
    try:
        # the pre-training recipe runs only for a cache folder (the quickstart's model is committed)
        remake = ("model.pretrained=${paths.cache_dir}/vit_digits_0-4", "model.sha256=null")
        with hydra_cfg(tmp_path, ctrl_c, *remake) as cfg, pytest.raises(SystemExit) as stop:
            train(cfg)
    finally:
        signal.signal(signal.SIGINT, handler)
    assert stop.value.code == 130
    pre = json.loads((tmp_path / "cache" / "vit_digits_0-4_run" / "result.json").read_text())
    record = json.loads((tmp_path / "run" / "result.json").read_text())
    assert pre["status"] == "interrupted" and record["status"] == "interrupted", record.get("error")
    assert "re-running" in record["error"]


def test_wandb_offline_writes_a_run(cifar: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    record, _ = smoke(cifar, "peft=onelora", "logger=wandb")
    assert record["status"] == "ok"
    import wandb

    # wandb.finish() (in train) hands the records to wandb's service process, which writes the file later; its
    # shutdown waits for the writes (as a process's exit does after `python run.py`). Reading before it races.
    wandb.teardown()
    runs = list((cifar / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb"))
    log = next(runs[0].glob("run-*.wandb")).read_bytes()  # history records carry the metric keys as JSON
    assert b"val/accuracy" in log and b"train/loss_epoch" in log and b"peft_params" in log


def test_quickstart_with_reduced_budget(tmp_path: Path) -> None:
    """`python run.py` fine-tunes the committed digits ViT with 1LoRA (tests/test_source_model.py: re-making it)."""
    with hydra_cfg(tmp_path, "trainer.max_epochs=3") as cfg:
        record, _ = train(cfg)
    assert record["status"] == "ok" and record["peft"] == "onelora" and record["data"] == "digits_5-9"
    assert record["metric_best"] > 0.3  # chance is 0.2


def test_bad_input_one_line_and_nonzero_exit(tmp_path: Path) -> None:
    paths = [
        f"paths.data_dir={tmp_path / 'nodata'}",
        f"hydra.run.dir={tmp_path / 'r'}",
        f"paths.output_dir={tmp_path / 'r'}",
    ]
    proc = _cli("experiment=smoke_classification", "~data.synthetic", *paths)  # not built on first use here
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()[-1]
    assert err.startswith("error: data cifar_synthetic:") and "not found (data_dir)" in err and "paths.data_dir=" in err
    record = json.loads((tmp_path / "r" / "result.json").read_text())
    assert record["status"] == "failed"

    proc = _cli("model=llama_tiny", "task=classification", *paths)
    assert proc.returncode == 2 and "does not fit task classification" in proc.stderr

    proc = _cli("peft=nosuchmethod", "dry_run=true")
    assert proc.returncode != 0 and "onelora" in proc.stderr and "nosuchmethod" in proc.stderr


@pytest.mark.parametrize(
    ("override", "says"),
    [
        ("data.module.batch_size=abc", "data.module.batch_size='abc' is not allowed; data.module.batch_size takes a "
         "whole number >= 1"),
        ("trainer.max_epochs=two", "trainer.max_epochs takes a whole number >= -1"),
        ("dry_run=maybe", "dry_run takes true or false"),  # a string would have been silently true
        ("callbacks.checkpoint.every_n_train_steps=abc", "every_n_train_steps takes a whole number >= 0"),
        ("task.optimizer.lr=fast", "task.optimizer.lr takes a number"),
        ("task.optimizer.lr=-1", "task.optimizer.lr=-1 is not allowed; task.optimizer.lr takes a number (e.g. 1e-4) > 0"),
        ("task.optimizer.lr=0", "task.optimizer.lr takes a number (e.g. 1e-4) > 0"),  # it trained nothing, said ok
        ("task.optimizer.weight_decay=-0.1", "task.optimizer.weight_decay takes a number (e.g. 1e-4) >= 0"),
        ("seed=-1", "seed=-1 is not allowed; seed takes a whole number from 0 to 4294967295"),
        ("seed=4294967296", "seed takes a whole number from 0 to 4294967295"),
        ("trainer.precision=17", "the Lightning Trainer refuses the trainer.* settings: Precision 17 is invalid"),
        ("export_to=/dev/null/model", "export_to=/dev/null/model: /dev/null is not a writable folder"),  # said before
    ],  # training, not as a NotADirectoryError traceback after it
)  # fmt: skip
def test_a_value_of_the_wrong_type_is_one_line(tmp_path: Path, override: str, says: str) -> None:
    from onelora.errors import ConfigError
    from onelora.run.preflight import check_export_to, check_values
    from onelora.run.train import instantiate_trainer

    with hydra_cfg(tmp_path, "experiment=smoke_classification", override) as cfg:
        with pytest.raises(ConfigError) as e:
            check_values(cfg)
            check_export_to(cfg)
            instantiate_trainer(cfg, [], [], [])
    assert says in str(e.value) and "\n" not in str(e.value)


def test_no_progress_bar_off_a_terminal(tmp_path: Path) -> None:
    """Piped or in a SLURM log, Lightning's Rich bar printed its last frame as 7 garbled lines after the epochs."""
    from onelora.run.train import instantiate_trainer

    with hydra_cfg(tmp_path) as cfg:  # the quickstart: trainer.enable_progress_bar=true
        assert cfg.trainer.enable_progress_bar and not sys.stdout.isatty()
        assert instantiate_trainer(cfg, [], [], []).progress_bar_callback is None


def test_multirun_through_submitit_then_report(cifar: Path) -> None:
    """A sweep through the submitit launcher (jobs as subprocesses), then the report over its run dirs."""
    logs = cifar / "logs"
    proc = _cli("-m", "experiment=smoke_classification", "peft=onelora,bitfit", "seed=0,1", "hydra/launcher=local",
                f"paths.data_dir={cifar / 'data'}", f"paths.log_dir={logs}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    sweep = logs / "multiruns" / "smoke_classification"
    records = sorted(sweep.glob("*/seed*/result.json"))
    assert len(records) == 4 and all(json.loads(r.read_text())["status"] == "ok" for r in records)
    out = cifar / "report"
    rep = subprocess.run([sys.executable, str(ROOT / "scripts" / "report.py"), str(sweep), "--out", str(out)],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)  # fmt: skip
    assert rep.returncode == 0, rep.stderr[-2000:]
    summary = (out / "summary.csv").read_text()
    assert "onelora" in summary and "bitfit" in summary and (out / "bubble.png").stat().st_size > 0
