"""What a sweep on a cluster meets: signals, kills in the middle of an epoch, damaged checkpoints, DDP, bad samples.

Every resumed run is compared with one uninterrupted run of the same config and seed (`straight`): exact
equality of the final metrics. Signals and kills are real, sent to real subprocesses.
"""

from __future__ import annotations

import json
import logging
import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from fixtures_depth import write_nyu
from helpers import CHILD_PATH, ROOT, hydra_cfg, write_cifar10

from onelora.errors import UserError
from onelora.run.build import build_peft_model
from onelora.run.checkpoints import RunError, load_run
from onelora.run.train import train

# checkpoints every 2 steps (this override alone), all kept; 2 epochs of 4 steps: files at steps 2, 4, 6, 8
COMMON = (
    "experiment=smoke_classification",
    "peft=onelora",
    "trainer.max_epochs=2",
    "callbacks.checkpoint.every_n_train_steps=2",
    "callbacks.checkpoint.save_top_k=-1",
)


def _signal_at(step: int, name: str, once: Path | None = None) -> list[str]:
    out = ["+callbacks.signal._target_=helpers.SignalAtStep", f"+callbacks.signal.step={step}",
           f"+callbacks.signal.signal={name}"]  # fmt: skip
    return out + ([f"+callbacks.signal.once={once}"] if once else [])


def _kill_at(step: int) -> list[str]:
    return ["+callbacks.kill._target_=helpers.SignalAtStep", f"+callbacks.kill.step={step}",
            "+callbacks.kill.signal=SIGKILL"]  # fmt: skip


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": CHILD_PATH, "HYDRA_FULL_ERROR": "1"}
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=300)  # fmt: skip


def _paths(tmp: Path) -> list[str]:
    return [f"paths.data_dir={tmp / 'data'}", f"hydra.run.dir={tmp / 'run'}", f"paths.output_dir={tmp / 'run'}"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """The uninterrupted run, and its folder (checkpoints at steps 2, 4, 6, 8)."""
    tmp = tmp_path_factory.mktemp("straight")
    write_cifar10(tmp / "data" / "cifar_synthetic")
    with hydra_cfg(tmp, *COMMON) as cfg:
        record, _ = train(cfg)
    assert record["status"] == "ok"
    names = sorted(p.name for p in (tmp / "run" / "checkpoints").glob("*.ckpt") if not p.is_symlink())
    assert names == ["epoch=0-step=2.ckpt", "epoch=0-step=4.ckpt", "epoch=1-step=6.ckpt", "epoch=1-step=8.ckpt"]
    return record, tmp / "run"


def _copy_run(straight_dir: Path, tmp: Path, keep: list[int], link_to: str) -> Path:
    """A run folder holding some of the uninterrupted run's checkpoints, last.ckpt linking to `link_to`."""
    write_cifar10(tmp / "data" / "cifar_synthetic")
    ckpts = tmp / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    for src in straight_dir.glob("checkpoints/*.ckpt"):
        if not src.is_symlink() and int(src.stem.split("step=")[1]) in keep:
            shutil.copy2(src, ckpts / src.name)
    (ckpts / "last.ckpt").symlink_to(link_to)
    return ckpts


def _resume(tmp: Path, *extra: str) -> dict:
    with hydra_cfg(tmp, *COMMON, *extra) as cfg:
        return train(cfg)[0]


def _same_result(a: dict, b: dict) -> None:
    assert a["status"] == b["status"] == "ok"
    assert a["metrics"] == pytest.approx(b["metrics"], abs=1e-6) and a["metric_best"] == b["metric_best"]


# --- 14.1 + 14.2: SIGTERM, submitit's requeue signal, kill -9 mid-epoch: each resumes to the uninterrupted result --
def test_sigterm_requeue_and_kill9_resume_exactly(straight: tuple[dict, Path], tmp_path: Path) -> None:
    """One run directory through three stops (real signals to real processes), then the end, in-process."""
    write_cifar10(tmp_path / "data" / "cifar_synthetic")
    run, ckpts = tmp_path / "run", tmp_path / "run" / "checkpoints"
    # 1. SIGTERM at step 3 (SLURM's preemption, scancel): a checkpoint there, the record says so, exit 143
    proc = _cli(*COMMON, *_paths(tmp_path), *_signal_at(3, "SIGTERM"))
    assert proc.returncode == 143, proc.stderr[-2000:]
    record = json.loads((run / "result.json").read_text())
    assert record["status"] == "interrupted" and "SIGTERM" in record["error"] and "Traceback" not in proc.stderr
    assert sorted(p.name for p in ckpts.iterdir()) == ["epoch=0-step=2.ckpt", "epoch=0-step=3.ckpt", "last.ckpt"]
    assert os.readlink(ckpts / "last.ckpt") == "epoch=0-step=3.ckpt"  # 3 is no multiple of 2: the signal's

    # 2. the same run as a submitit job (same folder): it resumes at step 3; submitit's requeue signal (USR2) at
    # step 5 gives a checkpoint there, then submitit requeues the job, which resumes at step 5 and is killed
    # (kill -9) at step 7, in the middle of epoch 1, its last checkpoint at step 6
    proc = _cli("-m", *COMMON, "hydra/launcher=local", f"paths.data_dir={tmp_path / 'data'}",
                f"hydra.sweep.dir={tmp_path}", "hydra.sweep.subdir=run", f"paths.log_dir={tmp_path / 'logs'}",
                *_signal_at(5, "SIGUSR2"), *_kill_at(7))  # fmt: skip
    job_logs = "".join(p.read_text() for p in tmp_path.rglob(".submitit/*/*_log.*"))
    assert "Requeued job" in job_logs, proc.stderr[-3000:]  # submitit's own requeue (the local executor restarts)
    assert (ckpts / "epoch=1-step=5.ckpt").is_file()  # written at the requeue signal
    assert os.readlink(ckpts / "last.ckpt") == "epoch=1-step=6.ckpt"  # the requeued job's last before kill -9

    # 3. re-running resumes at step 6, in the middle of epoch 1: the uninterrupted run's result, exactly
    _same_result(_resume(tmp_path), straight[0])


def test_lightning_auto_requeue_is_off_under_slurm(monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning.fabric.plugins.environments import SLURMEnvironment

    from onelora.run.callbacks.preemption import cluster_plugins

    assert cluster_plugins() == []
    for k, v in {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "onelora", "SLURM_JOB_ID": "7", "SLURM_PROCID": "0",
                 "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}.items():  # fmt: skip
        monkeypatch.setenv(k, v)
    (env,) = cluster_plugins()
    assert isinstance(env, SLURMEnvironment) and env.auto_requeue is False  # submitit alone requeues


# --- 14.3: a checkpoint without a trained tensor stops the resume with one line naming it -------------------------
def test_resume_refuses_checkpoint_missing_trained_tensors(straight: tuple[dict, Path], tmp_path: Path) -> None:
    ckpts = _copy_run(straight[1], tmp_path, keep=[4], link_to="epoch=0-step=4.ckpt")
    path = ckpts / "epoch=0-step=4.ckpt"
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    dropped = "model.vit.layers.1.attention.v_proj.adapter.b"
    del ckpt["state_dict"][dropped]
    torch.save(ckpt, path)
    with pytest.raises(RunError) as err:
        _resume(tmp_path)
    msg = str(err.value)
    assert isinstance(err.value, UserError) and "\n" not in msg
    assert str(path) in msg and dropped in msg and "lacks 1 trained tensor" in msg
    # the same check, shared, when a finished run's model is rebuilt for an analysis
    with pytest.raises(RunError, match=f"lacks 1 trained tensor.*{dropped}"):
        load_run(straight[1], ckpt=path)


# --- 16.6: a truncated last.ckpt: named, the newest checkpoint that loads is used; rerun=true sets all aside -------
def test_truncated_last_ckpt_falls_back(
    straight: tuple[dict, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ckpts = _copy_run(straight[1], tmp_path, keep=[4, 6, 8], link_to="epoch=1-step=8.ckpt")
    newest = ckpts / "epoch=1-step=8.ckpt"
    newest.write_bytes(newest.read_bytes()[:5000])  # a copy cut short
    with caplog.at_level(logging.INFO, logger="onelora"):
        resumed = _resume(tmp_path)
    lines = [r.getMessage() for r in caplog.records if "newest checkpoint that loads" in r.getMessage()]
    assert len(lines) == 1 and str(ckpts / "epoch=1-step=6.ckpt") in lines[0] and str(newest) in lines[0]
    assert (ckpts / "epoch=1-step=8.ckpt.unreadable").is_file()  # set aside, not deleted
    _same_result(resumed, straight[0])

    # rerun=true starts afresh whatever is there (here: an ok record and a damaged last.ckpt target)
    target = ckpts / os.readlink(ckpts / "last.ckpt")
    target.write_bytes(target.read_bytes()[:100])
    redo = _resume(tmp_path, "rerun=true")
    _same_result(redo, straight[0])
    aside = [p for p in (tmp_path / "run").iterdir() if p.name.startswith("checkpoints.")]
    assert len(aside) == 1 and (aside[0] / target.name).stat().st_size == 100  # kept aside as it was


def test_no_loadable_checkpoint_starts_afresh_saying_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from onelora.run.checkpoints import resume_checkpoint

    (tmp_path / "epoch=0-step=2.ckpt").write_bytes(b"PK\x03\x04 cut short")
    (tmp_path / "last.ckpt").symlink_to("epoch=0-step=2.ckpt")
    with caplog.at_level(logging.WARNING, logger="onelora"):
        assert resume_checkpoint(tmp_path) is None
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith(f"no checkpoint in {tmp_path} loads") and "epoch=0-step=2.ckpt" in line
    assert "starting afresh" in line and (tmp_path / "epoch=0-step=2.ckpt.unreadable").is_file()


# --- 16.7: killed between deleting the old checkpoint and re-linking last.ckpt: resume from the newest file --------
def test_stale_link_resumes_from_newest_checkpoint(
    straight: tuple[dict, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Lightning saved step 6, deleted step 4, and was killed before pointing last.ckpt at step 6
    ckpts = _copy_run(straight[1], tmp_path, keep=[2, 6], link_to="epoch=0-step=4.ckpt")
    assert not (ckpts / "last.ckpt").exists()  # the link dangles
    with caplog.at_level(logging.INFO, logger="onelora"):
        resumed = _resume(tmp_path)
    assert f"resuming from {ckpts / 'epoch=1-step=6.ckpt'}" in caplog.text
    assert "points to epoch=0-step=4.ckpt, which is gone" in caplog.text
    _same_result(resumed, straight[0])


# --- 14.4: full fine-tuning under DDP on 2 CPU processes --------------------------------------------------------
def test_ddp_full_finetuning_on_two_cpu_processes(tmp_path: Path) -> None:
    write_nyu(tmp_path / "data" / "depth_synthetic")
    args = (
        "experiment=smoke_mde",
        "peft=full",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.precision=32-true",
        "trainer.max_epochs=1",
        "trainer.limit_val_batches=1",
        "data.module.batch_size=1",
    )  # fmt: skip  (2 steps: the one-cycle schedule starts at its peak)
    proc = _cli(*args, *_paths(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / "run" / "result.json").read_text())
    assert record["status"] == "ok" and proc.stdout.count("ok: mde") == 1  # one summary, not one per process

    # as on one device: what a forward uses trained; what it never uses has no gradient, so AdamW left it alone
    with hydra_cfg(tmp_path, *args) as cfg:
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        initial, _ = build_peft_model(cfg)
    trained = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    trained = trained["state_dict"]
    unused = {"backbone.embeddings.mask_token"} | {
        n for n, _ in initial.named_parameters() if n.startswith("neck.fusion_stage.layers.0.residual_layer1.")
    }
    assert len(unused) == 5  # the mask token; residual_layer1's two convolutions, weight and bias
    changed = {n for n, p in initial.named_parameters() if not torch.equal(p, trained[f"model.{n}"])}
    assert changed == {n for n, _ in initial.named_parameters()} - unused


def test_ddp_finds_unused_parameters_only_for_full_finetuning(tmp_path: Path) -> None:
    from onelora.run.strategies import trains_own_weights

    for method, expected in (("full", True), ("onelora", False), ("lora", False), ("bitfit", False)):
        with hydra_cfg(tmp_path, "experiment=smoke_mde", f"peft={method}") as cfg:
            model, _ = build_peft_model(cfg, meta=True)
        assert trains_own_weights(model) is expected, method


# --- 14.9: every unreadable sample listed, with its split-file line, before a sweep --------------------------------
def test_verify_data_lists_every_unreadable_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = write_nyu(tmp_path / "data" / "depth_synthetic")
    main = runpy.run_path(str(ROOT / "scripts" / "verify_data.py"), run_name="verify")["main"]
    args = ["experiment=smoke_mde", f"paths.data_dir={tmp_path / 'data'}", "--no-progress"]
    assert main(args) == 0
    assert "6 of 6 items read, 0 unreadable" in capsys.readouterr().err

    split = root / "train_test_inputs" / "nyudepthv2_train_files_with_gt.txt"
    lines = split.read_text().splitlines()
    rgb = root / "sync" / lines[1].split()[0].lstrip("/")
    depth = root / "sync" / lines[3].split()[1].lstrip("/")
    rgb.write_bytes(b"not a jpeg")
    depth.write_bytes(depth.read_bytes()[:60])  # a truncated PNG
    assert main(args) == 1
    out, err = capsys.readouterr()
    found = out.strip().splitlines()
    assert len(found) == 2 and "4 of 6 items read, 2 unreadable" in err
    assert str(rgb) in found[0] and f"{split}, line 2" in found[0]
    assert str(depth) in found[1] and f"{split}, line 4" in found[1]

    missing = root / "sync" / lines[2].split()[0].lstrip("/")
    missing.unlink()  # a listed file that is missing is one more finding, not the end of the check
    assert main(args) == 1
    out, err = capsys.readouterr()
    assert "3 of 6 items read, 3 unreadable" in err and f"RGB image not found: {missing}" in out

    split.unlink()  # the data set itself broken: one line, exit 2
    assert main(args) == 2
    assert "split file not found" in capsys.readouterr().err

    assert main([*args[:2], "data.module.batch_sise=2", "--no-progress"]) == 2  # a misspelt key: one line
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "batch_sise" in err and "Traceback" not in err

    cifar = ["experiment=smoke_classification", f"paths.data_dir={tmp_path / 'fresh'}", "--no-progress"]
    assert main(cifar) == 0  # built on first use
    batch = tmp_path / "fresh" / "cifar_synthetic" / "cifar-10-batches-py" / "data_batch_2"
    batch.write_bytes(batch.read_bytes()[:500])  # a truncated pickle: one line, not torchvision's traceback
    assert main(cifar) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "a batch file in" in err and "cannot be read (UnpicklingError" in err

    fresh = ["experiment=smoke_mde", f"paths.data_dir={tmp_path / 'fresh'}", "--no-progress"]
    assert main(fresh) == 0  # a smoke experiment's data set is built on first use, as by run.py
    assert "6 of 6 items read, 0 unreadable" in capsys.readouterr().err
