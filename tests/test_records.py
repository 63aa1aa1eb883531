"""Records that tell the truth: `running` while a run runs and `interrupted` once its process is gone, one process per
run directory, a sweep that runs every job and group and counts the failures, an unwritable log directory as one
line, the data set checked before any weight, the hub offline when its files are local, a curve whole after resume."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import yaml
from helpers import CHILD_PATH, ROOT, hydra_cfg, write_cifar10

from onelora.errors import DatasetFormatError, RunDirError
from onelora.report import write_report
from onelora.run.record import LOCK, acquire_lock, effective_status, read_record, release_lock
from onelora.run.train import train

HOST = socket.gethostname()
ENV = {**os.environ, "PYTHONPATH": CHILD_PATH, "HF_HUB_OFFLINE": "1"}


class RecordProbe(L.Callback):
    """Reads the run's result.json while the run trains (built by Hydra from +callbacks.probe)."""

    seen: list[dict | None] = []

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        RecordProbe.seen.append(read_record(self.path))


@pytest.fixture
def cifar(tmp_path: Path) -> Path:
    write_cifar10(tmp_path / "data" / "cifar_synthetic")
    return tmp_path


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped: the pid names no process now
    return proc.pid


def test_running_record_then_a_resume_keeps_the_whole_curve(cifar: Path) -> None:
    run = cifar / "run"
    probe = ["+callbacks.probe._target_=test_records.RecordProbe", f"+callbacks.probe.path={run / 'result.json'}"]
    RecordProbe.seen = []
    with hydra_cfg(cifar, "experiment=smoke_classification", "trainer.max_epochs=1", *probe) as cfg:
        first, _ = train(cfg)
    during = RecordProbe.seen[0]
    assert during["status"] == "running" and during["pid"] == os.getpid() and during["host"] == HOST
    assert during["started_at"] and during["peft"] == "onelora" and first["status"] == "ok"
    assert not (run / LOCK).exists()  # released at the end
    before = _rows(run / "csv" / "metrics.csv")
    assert {r["epoch"] for r in before} == {"0"}

    # the run ended badly after epoch 0 (its record not ok): re-running resumes from the epoch-0 checkpoint
    (run / "result.json").write_text(json.dumps(first | {"status": "failed"}))
    with hydra_cfg(cifar, "experiment=smoke_classification", "trainer.max_epochs=2") as cfg:
        second, _ = train(cfg)
    after = _rows(run / "csv" / "metrics.csv")
    assert second["status"] == "ok"
    assert after[: len(before)] == before  # epoch 0's rows kept as they were (Lightning's writer deletes them)
    assert {r["epoch"] for r in after[len(before) :]} == {"1"}
    steps = [int(r["step"]) for r in after]
    assert steps == sorted(steps) and int(after[len(before)]["step"]) == 4  # epoch 1 starts at step 4 (4 batches)


def test_a_record_whose_process_is_gone_reads_interrupted(tmp_path: Path) -> None:
    dead = _dead_pid()
    base = {"task": "classification", "peft": "onelora", "data": "cifar10", "name": "x", "metric_name": "accuracy",
            "metric_direction": "max", "metric_best": None, "metrics": {}}  # fmt: skip
    records = {0: {"pid": dead, "host": HOST}, 1: {"pid": os.getpid(), "host": HOST}, 2: {"pid": dead, "host": "gpu7"}}
    for seed, who in records.items():
        path = tmp_path / "runs" / "onelora" / f"seed{seed}" / "result.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(base | who | {"seed": seed, "status": "running"}))
    assert effective_status(base | records[0] | {"status": "running"}) == "interrupted"
    assert effective_status(base | records[0] | {"status": "ok"}) == "ok"
    cov = "\n".join(write_report([tmp_path / "runs"], tmp_path / "out").coverage)
    assert "interrupted: onelora seed 0" in cov
    assert "running: onelora seed 1" in cov  # this process: alive
    assert "running: onelora seed 2" in cov  # another host: cannot tell, so not called dead


def test_a_second_process_is_refused_and_a_stale_lock_is_not(cifar: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = cifar / "run"
    run.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (run / LOCK).write_text(json.dumps({"pid": other.pid, "host": HOST, "started_at": "2026-01-01T00:00:00"}))
        theirs = json.dumps({"status": "running", "pid": other.pid, "host": HOST})
        (run / "result.json").write_text(theirs)
        with hydra_cfg(cifar, "experiment=smoke_classification") as cfg:
            with pytest.raises(RunDirError, match=f"in use by process {other.pid} on {HOST}"):
                train(cfg)
        assert (run / "result.json").read_text() == theirs  # the refused process wrote nothing over it
    finally:
        other.kill()
        other.wait()
    lock = acquire_lock(run)  # its process is gone: the lock does not block
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    release_lock(lock)
    assert not lock.exists()

    # a lock from another machine cannot be checked: it blocks, and the line says how to clear it; the same SLURM
    # job requeued on another node takes it over
    lock.write_text(json.dumps({"pid": 1, "host": "gpu7", "started_at": "x", "slurm_job_id": "42"}))
    with pytest.raises(RunDirError, match=f"in use by process 1 on gpu7 .*if it is gone, delete {lock}"):
        acquire_lock(run)
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    assert json.loads(acquire_lock(run).read_text())["slurm_job_id"] == "42"


def test_an_unwritable_log_directory_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    for mode in ([], ["-m", "peft=onelora,lora"]):
        proc = subprocess.run([sys.executable, str(ROOT / "run.py"), *mode, "experiment=quickstart",
                               f"paths.log_dir={blocker / 'logs'}"], capture_output=True, text=True, cwd=ROOT,
                              env=ENV, timeout=120)  # fmt: skip
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr
        assert lines[0].startswith(f"error: cannot write the log directory {blocker / 'logs'}")
        assert "paths.log_dir=" in lines[0]


def test_an_empty_path_is_one_line(tmp_path: Path) -> None:
    """`paths.log_dir=` (empty) would put the runs under the filesystem's root: refused before anything is written."""
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), "paths.log_dir=", "dry_run=true"], capture_output=True,
                          text=True, cwd=tmp_path, env=ENV, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: paths.log_dir is empty; give a folder (paths.log_dir=/path) or leave it out for the default"
    ]
    assert not (tmp_path / ".hydra").exists()


def test_a_multirun_records_each_failure_and_goes_on(cifar: Path) -> None:
    """Both jobs end in a user error (an option neither method has): each failure is in the job's own result.json,
    the second job runs after the first failed, and the exit code counts the jobs that did not end ok."""
    logs = cifar / "logs"
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), "-m", "experiment=smoke_classification",
                           "peft=bitfit,onelora", "++peft.options.no_such_option=1", f"paths.data_dir={cifar / 'data'}",
                           f"paths.log_dir={logs}"], capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=300)  # fmt: skip
    records = {p.parts[-4]: json.loads(p.read_text()) for p in logs.rglob("result.json")}
    assert set(records) == {"bitfit", "onelora"}, proc.stderr[-3000:]
    for method, record in records.items():
        assert record["status"] == "failed" and "takes no option no_such_option" in record["error"], method
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2 and "bitfit" in errors[0] and "onelora" in errors[1]  # one line each, no traceback
    assert "Traceback" not in proc.stderr
    assert proc.returncode == 2


def test_a_sweep_runs_every_group(tmp_path: Path) -> None:
    """Two groups whose multiruns both fail at once (no such experiment): the second still runs, and the exit code
    counts both failures."""
    manifest = tmp_path / "two_groups.yaml"
    manifest.write_text(yaml.safe_dump({
        "title": "two groups", "methods": ["lora"], "seeds": [0], "metric": {"name": "accuracy"},
        "groups": [{"experiment": "no_such_experiment_a", "transfer": "a"},
                   {"experiment": "no_such_experiment_b", "transfer": "b"}]}))  # fmt: skip
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "sweep.py"), str(manifest),
                           f"paths.log_dir={tmp_path / 'logs'}"], capture_output=True, text=True, cwd=ROOT, env=ENV,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 2
    for name in ("no_such_experiment_a", "no_such_experiment_b"):  # Hydra's own error, from each group's multirun
        assert f"experiment/{name}" in proc.stderr, proc.stderr[-3000:]


@pytest.mark.slow
def test_ctrl_c_stops_the_whole_sweep(tmp_path: Path) -> None:
    """Ctrl-C on `make demo` printed a KeyboardInterrupt traceback, left the `run.py -m` child running and deleted
    the progress folder it wrote to, so every later job was recorded `failed: FileNotFoundError`; the next sweep
    truncated the log. A real SIGINT to the sweep's process group, as a terminal sends it, mid-training."""
    import signal
    import time

    from onelora.run.record import pid_alive

    manifest = tmp_path / "two_runs.yaml"
    manifest.write_text(yaml.safe_dump({"title": "two runs", "experiment": "smoke_classification",
                                        "methods": ["onelora"], "seeds": [0, 1], "metric": {"name": "accuracy"}}))  # fmt: skip
    runs = tmp_path / "logs" / "multiruns" / "smoke_classification"
    log = runs / "sweep-0.log"
    log.parent.mkdir(parents=True)
    log.write_text("an earlier sweep's output\n")
    training = tmp_path / "training"
    env = {**ENV, "ONELORA_ROOT": str(tmp_path), "ONELORA_TEST_TRAINING": str(training), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    cmd = [sys.executable, str(ROOT / "scripts" / "sweep.py"), str(manifest), "--progress",
           "+callbacks.slow._target_=helpers.SlowSteps", "+callbacks.slow.seconds=0.3"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 240
    while not training.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert training.exists(), proc.communicate()[1][-3000:]
    os.killpg(proc.pid, signal.SIGINT)  # the terminal's Ctrl-C: to every process of its foreground group
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    assert err.strip().splitlines()[-1].startswith("sweep: interrupted; every multirun stopped")
    records = [json.loads(p.read_text()) for p in runs.rglob("result.json")]
    assert [r["status"] for r in records] == ["interrupted"], records  # seed 0 cut short; seed 1 never started
    assert "re-running the same command resumes" in records[0]["error"]
    assert not pid_alive(records[0]["pid"])  # the multirun (the run's process) ended with the sweep
    assert log.read_text().startswith("an earlier sweep's output\n")  # appended, not truncated
    assert "interrupted: classification" in log.read_text()  # the run's own summary line, in the log


def test_missing_data_is_said_before_any_weight_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import onelora.run.build
    import onelora.run.train

    def no_weights(*args, **kwargs):
        raise AssertionError("weights were loaded before the data set was checked")

    monkeypatch.setattr(onelora.run.build, "build_model", no_weights)
    monkeypatch.setattr(onelora.run.train, "ensure_pretrained", no_weights)
    with hydra_cfg(tmp_path, "task=mde", "peft=onelora") as cfg:
        with pytest.raises(DatasetFormatError, match=r"data nyu: .*/data/nyu/sync not found \(train_root\)"):
            train(cfg)
    record = json.loads((tmp_path / "run" / "result.json").read_text())
    assert record["status"] == "failed" and "DatasetFormatError" in record["error"]


def test_the_hub_goes_offline_when_the_files_are_local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    from onelora.run.preflight import offline_if_cached

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with hydra_cfg(tmp_path, "task=mde", "model=depth_anything_small") as cfg:
        assert offline_if_cached(cfg) is False and constants.HF_HUB_OFFLINE is False  # not cached: the hub is needed
        # the hub cache's layout: models--<org>--<name>/snapshots/<revision>/<file>, refs/main -> <revision>
        repo = tmp_path / "hub" / "models--depth-anything--Depth-Anything-V2-Metric-Indoor-Small-hf"
        (repo / "snapshots" / "abc123").mkdir(parents=True)
        (repo / "snapshots" / "abc123" / "config.json").write_text("{}")
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text("abc123")
        assert offline_if_cached(cfg) is True
    assert constants.HF_HUB_OFFLINE is True and os.environ["HF_HUB_OFFLINE"] == "1"


def test_a_long_override_list_names_a_folder_that_fits(cifar: Path) -> None:
    """A multirun with 14 overrides (some 370 bytes of `k=v,...`): each job's folder name fits the file system (a
    head of the overrides and a stable hash of all of them), the record and `.hydra/overrides.yaml` keep every
    override, and a report tells the two jobs apart by their overrides."""
    import hashlib

    from onelora.report.aggregate import config_key, sweep_axes
    from onelora.run.record import MAX_DIRNAME, spell_bools

    settings = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
                "trainer.gradient_clip_val=1.0", "trainer.num_sanity_val_steps=0", "trainer.check_val_every_n_epoch=1",
                "trainer.enable_model_summary=false", "trainer.deterministic=false", "trainer.precision=32-true",
                "task.optimizer.weight_decay=0.0", "callbacks.checkpoint.save_last=link",
                "callbacks.checkpoint.save_top_k=1", "callbacks.checkpoint.every_n_epochs=1"]  # fmt: skip
    logs = cifar / "logs"
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), "-m", "experiment=smoke_classification", "peft=onelora",
                           *settings, "trainer.log_every_n_steps=1,2", f"paths.data_dir={cifar / 'data'}",
                           f"paths.log_dir={logs}"], capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**ENV, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT / "src")])})  # fmt: skip
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    records = sorted(logs.rglob("result.json"))
    assert len(records) == 2
    keys = set()
    for path in records:
        record, folder = json.loads(path.read_text()), path.parent
        overrides = {spell_bools(o) for o in record["overrides"]}  # a multirun spells booleans `False`
        every = [*settings, next(o for o in overrides if o.startswith("trainer.log_every_n_steps="))]
        assert record["status"] == "ok" and set(every) <= overrides
        saved = yaml.safe_load((folder / ".hydra" / "overrides.yaml").read_text())
        assert set(every) <= {spell_bools(o) for o in saved}
        full = ",".join(sorted(every))  # Hydra's override_dirname: the sorted `k=v` of the non-excluded keys
        assert len(full) > 255 and len(folder.name.encode()) <= MAX_DIRNAME < 255
        assert folder.name.endswith("~" + hashlib.sha1(full.encode()).hexdigest()[:12])
        assert full.startswith(folder.name.split("~")[0])
        keys.add(config_key(record["overrides"], sweep_axes()))
    assert len(keys) == 2 and all("trainer.precision=32-true" in k for k in keys)  # two configurations, in full
