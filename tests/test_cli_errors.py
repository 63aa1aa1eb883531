"""Command lines Hydra cannot compose end as one line naming the value and the fix, exit 2 (not Hydra's 5-40)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from helpers import ROOT
from hydra import compose, initialize_config_dir

from onelora.errors import hydra_error_line


def _compose_error(*overrides: str) -> Exception:
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        with pytest.raises(Exception) as info:
            compose("config", overrides=list(overrides))
    return info.value


def test_unknown_option_of_a_group_lists_the_options_on_one_line() -> None:
    line = hydra_error_line(_compose_error("peft=onelr"))
    assert line is not None and "\n" not in line
    assert line.startswith("Could not find 'peft/onelr'; peft options: ")
    options = line.split("peft options: ")[1].split(", ")
    assert "onelora" in options and "lora" in options and "Config search path:" not in line


def test_misspelt_key_names_the_key_and_the_plus_form() -> None:
    line = hydra_error_line(_compose_error("peft.options.rnak=2"))
    assert line == (
        "Could not override 'peft.options.rnak' (Key 'rnak' is not in struct); "
        "check the spelling, or add a new key with +peft.options.rnak=2"
    )


def test_other_errors_are_not_hydras() -> None:
    assert hydra_error_line(ValueError("x")) is None


def test_cli_prints_one_line_and_exits_2() -> None:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "trainer.max_epochs=[", "dry_run=true"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "error: no viable alternative at input '['; see https://hydra.cc/docs/advanced/override_grammar/basic/"
    ]


def _run_py(*args: str, path: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"} | ({"PATH": path} if path else {})
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=120)  # fmt: skip


def test_an_out_of_range_value_is_one_line_before_anything_is_built(tmp_path) -> None:
    """lr=0 trained nothing and said ok (and seed=-1 was Lightning's 41-line traceback, lr=-1 torch's 72 lines)."""
    where = [f"hydra.run.dir={tmp_path / 'r'}", f"paths.output_dir={tmp_path / 'r'}", f"paths.log_dir={tmp_path}",
             f"paths.data_dir={tmp_path / 'data'}", f"paths.cache_dir={tmp_path / 'cache'}"]  # fmt: skip
    proc = _run_py("experiment=smoke_classification", "task.optimizer.lr=0", *where)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: task.optimizer.lr=0 is not allowed; task.optimizer.lr takes a number (e.g. 1e-4) > 0"
    ]
    assert not (tmp_path / "data").exists() and not (tmp_path / "r" / "checkpoints").exists()  # nothing built
    # seed=-1 and the other ranges: test_train.py::test_a_value_of_the_wrong_type_is_one_line (the same check)


def test_the_slurm_launcher_without_slurm_is_one_line(tmp_path) -> None:
    """submitit's `Could not detect "srun"` came as a 35-line traceback."""
    bin_dir = tmp_path / "bin"  # a PATH without srun, whatever this machine has
    bin_dir.mkdir()
    proc = _run_py("-m", "hydra/launcher=slurm", "dry_run=true", f"paths.log_dir={tmp_path / 'logs'}",
                   path=str(bin_dir))  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: hydra/launcher=slurm needs SLURM (no `srun` on this machine); run it on the cluster's login node, "
        "or use hydra/launcher=local here"
    ]
