"""Monocular depth estimation end to end on CPU: tiny Depth Anything, NYU-format fixture, the source -> target chain."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from fixtures_depth import write_diode, write_kitti, write_nyu
from helpers import hydra_cfg
from hydra.utils import instantiate
from transformers import DepthAnythingForDepthEstimation

from onelora.commands.run import dry_run
from onelora.data.depth import DepthDataModule, network_input_size, warn_max_depth_mismatch
from onelora.data.errors import DatasetFormatError
from onelora.models import ModelError, build_model
from onelora.run.train import train
from onelora.tasks.depth import DepthTask

# the tiny model's adapted layers: 2 DINOv2 blocks of q, k, v, o (32 -> 32), fc1 (32 -> 64), fc2 (64 -> 32)
TINY_LAYERS = 2 * ([(32, 32)] * 4 + [(32, 64), (64, 32)])
QUERY = "backbone.encoder.layer.0.attention.q_proj.weight"


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny convolutions: one intra-op thread is fastest, and on a shared CPU several threads can spin for seconds."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def nyu_data(tmp_path: Path) -> Path:
    write_nyu(tmp_path / "data" / "depth_synthetic")
    return tmp_path


def _finite_metrics(record: dict) -> None:
    assert record["status"] == "ok", record.get("error")
    assert record["metric_name"] == "rmse" and record["metric_direction"] == "min"
    for key in ("rmse", "abs_rel", "d1", "log10", "rmse_log", "silog"):
        assert math.isfinite(record["metrics"][key]), key
    assert record["metrics"]["num_images"] == 2 and record["metrics"]["num_skipped"] == 0
    assert record["metric_best"] is not None and record["metric_best"] <= record["metrics"]["rmse"] + 1e-9


@pytest.mark.parametrize(
    ("method", "per_layer", "extra"),
    [
        ("onelora", lambda k, d: d, ["model.gradient_checkpointing=true"]),
        ("lora", lambda k, d: k + d, ["task.scheduler.name=cosine"]),  # transformers' schedules also work
    ],
)
def test_smoke_mde(nyu_data: Path, method: str, per_layer, extra: list[str]) -> None:
    with hydra_cfg(nyu_data, "experiment=smoke_mde", f"peft={method}", *extra) as cfg:
        record, task = train(cfg)
    _finite_metrics(record)
    assert record["task"] == "mde" and record["data"] == "depth_synthetic" and record["model"] == "depth_anything_tiny"
    assert record["peft_params"] == sum(per_layer(k, d) for k, d in TINY_LAYERS)
    assert record["head_params"] == 0 and record["adapted_layers"] == len(TINY_LAYERS)
    trained = {n: p for n, p in task.model.named_parameters() if p.requires_grad}
    assert trained and all(n.startswith("backbone.encoder.") and ".adapter." in n for n in trained)
    zero_init = [p for n, p in trained.items() if n.endswith((".adapter.b", ".lora_B"))]
    assert len(zero_init) == len(TINY_LAYERS) and all(bool(p.abs().sum() > 0) for p in zero_init)  # they trained
    if method == "onelora":  # activation checkpointing reached the DINOv2 encoder
        assert all(layer.gradient_checkpointing for layer in task.model.backbone.encoder.layer)
    else:  # cosine schedule, annealed to 0 at the last step
        assert task.trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_validation_has_no_flip_and_the_final_flip_pass_is_recorded_apart(nyu_data: Path) -> None:
    """The training's validations (metric_best, metrics) are one forward pass; `eval_flip` is one flip-averaged pass
    of the final weights, not counted in the validation time. Both recomputed here from the final weights."""
    from onelora.metrics.depth import DepthMetrics, flip_average

    with hydra_cfg(nyu_data, "experiment=smoke_mde", "peft=lora", "data.module.num_workers=0") as cfg:
        record, task = train(cfg)
        dm: DepthDataModule = instantiate(cfg.data.module)
        data = cfg.data
    _finite_metrics(record)
    dm.setup("validate")
    model = task.model.eval()
    plain, flipped = (DepthMetrics(data.min_depth, data.max_depth, crop=data.eval_crop) for _ in range(2))
    with torch.no_grad():
        for batch in dm.val_dataloader():
            fn = lambda x: model(pixel_values=x).predicted_depth  # noqa: E731
            plain.update(fn(batch["image"]).float(), batch["depth"])
            flipped.update(flip_average(fn, batch["image"]).float(), batch["depth"])
    plain_rmse, flip_rmse = float(plain.compute()["rmse"]), float(flipped.compute()["rmse"])
    assert record["metrics"]["rmse"] == pytest.approx(plain_rmse, rel=1e-5)  # the last validation: final weights
    assert record["eval_flip"]["rmse"] == pytest.approx(flip_rmse, rel=1e-5)
    assert abs(flip_rmse - plain_rmse) > 1e-4  # the two protocols differ on this model
    assert record["eval_flip"]["num_images"] == 2 and record["metric_best"] <= record["metrics"]["rmse"] + 1e-9


def test_schedule_and_beta1_are_zoedepths_init_scheduler(tmp_path: Path) -> None:
    """ZoeDepth's base_trainer.init_scheduler: OneCycleLR(lrs, epochs, steps_per_epoch, cycle_momentum=True,
    base_momentum=0.85, max_momentum=0.95, div_factor=1, final_div_factor=1e4, pct_start=0.7, three_phase=False)
    (cfg.json sched_kwargs). Ours, from the experiment's config: the same lr and β₁ at every step; β₁ goes
    0.95 -> 0.85 over the first 70% and back to 0.95."""
    from onelora.tasks.base import build_scheduler

    epochs, per_epoch = 5, 20
    with hydra_cfg(tmp_path, "experiment=mde_kitti2nyu") as cfg:
        sched_cfg, lr = dict(cfg.task.scheduler), cfg.task.optimizer.lr
    runs = []
    for official in (False, True):
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.AdamW([p], lr=lr, weight_decay=0.01)
        if official:
            sched = torch.optim.lr_scheduler.OneCycleLR(
                opt, [g["lr"] for g in opt.param_groups], epochs=epochs, steps_per_epoch=per_epoch,
                cycle_momentum=True, base_momentum=0.85, max_momentum=0.95, div_factor=1, final_div_factor=10000,
                pct_start=0.7, three_phase=False,
            )  # fmt: skip
        else:
            sched = build_scheduler(opt, sched_cfg, epochs * per_epoch)
        trace = []
        for _ in range(epochs * per_epoch):
            trace.append((opt.param_groups[0]["lr"], opt.param_groups[0]["betas"][0]))
            opt.step()
            sched.step()
        runs.append(trace)
    assert runs[0] == runs[1]
    beta1 = [b for _, b in runs[0]]
    assert beta1[0] == pytest.approx(0.95) and min(beta1) == pytest.approx(0.85) and beta1[-1] == pytest.approx(0.95)
    assert beta1.index(min(beta1)) == 69  # the turn at 70% of 100 steps


def test_source_checkpoint_starts_a_onelora_run(nyu_data: Path) -> None:
    src = nyu_data / "src"
    data = f"paths.data_dir={nyu_data / 'data'}"
    with hydra_cfg(nyu_data / "full", "experiment=smoke_mde", "peft=full", data, f"export_to={src}") as cfg:
        first, full_task = train(cfg)
    _finite_metrics(first)
    assert first["exported_to"] == str(src) and (src / "config.json").is_file()
    # ZoeDepth's full fine-tuning: encoder, DPT neck and head (output convolutions included) at lr/50
    groups = full_task.trainer.optimizers[0].param_groups
    assert [g["max_lr"] for g in groups] == pytest.approx([1e-2 / 50])
    trained = {id(p) for g in groups for p in g["params"]}
    assert {id(full_task.model.head.conv3.weight), id(full_task.model.neck.convs[0].weight)} <= trained
    final = {n: p.detach().clone() for n, p in full_task.model.state_dict().items()}

    exported = DepthAnythingForDepthEstimation.from_pretrained(src)
    assert exported.config.max_depth == 10 and exported.config.depth_estimation_type == "metric"
    assert torch.equal(exported.state_dict()[QUERY], final[QUERY])

    with hydra_cfg(nyu_data / "one", "experiment=smoke_mde", "peft=onelora", data, f"model.pretrained={src}") as cfg:
        second, task = train(cfg)
    _finite_metrics(second)
    assert second["peft_params"] == sum(d for _, d in TINY_LAYERS)
    loaded = task.model.state_dict()
    for name in (QUERY, "head.conv3.weight", "neck.convs.0.weight"):  # frozen: still the source's weights
        assert torch.equal(loaded[name], final[name]), name
    trained = [n for n, p in task.model.named_parameters() if p.requires_grad]
    assert trained and all(n.endswith(".adapter.b") for n in trained)


def test_missing_source_checkpoint_names_the_recipe(tmp_path: Path) -> None:
    nyu = write_nyu(tmp_path / "data" / "nyu")  # the data is there (checked first): the source model is not
    splits = f"data.split_dir={nyu / 'train_test_inputs'}"
    with hydra_cfg(tmp_path, "experiment=mde_kitti2nyu", "model=depth_anything_tiny", splits) as cfg:
        assert cfg.model.pretrained == str(tmp_path / "logs" / "sources" / "depth_anything_tiny_kitti")
        with pytest.raises(ModelError, match="python run.py experiment=mde_source_kitti"):
            train(cfg)


def test_missing_split_file_names_the_file(tmp_path: Path) -> None:
    expected = tmp_path / "data" / "depth_synthetic" / "train_test_inputs" / "nyudepthv2_train_files_with_gt.txt"
    write_nyu(tmp_path / "data" / "depth_synthetic")
    expected.unlink()
    with hydra_cfg(tmp_path, "experiment=smoke_mde") as cfg:
        with pytest.raises(DatasetFormatError) as exc:
            train(cfg)
    msg = str(exc.value)
    assert str(expected) in msg and "not found (train_split)" in msg and "configs/data/depth_synthetic.yaml" in msg
    # the data module's own check says the same, with the expected layout
    with hydra_cfg(tmp_path, "experiment=smoke_mde") as cfg:
        dm: DepthDataModule = instantiate(cfg.data.module)
    with pytest.raises(DatasetFormatError, match="split file not found") as exc:
        dm.setup("fit")
    assert str(expected) in str(exc.value) and "official_splits/test" in str(exc.value)
    assert "failed" in (tmp_path / "run" / "result.json").read_text()


def test_missing_image_is_reported_before_training(nyu_data: Path) -> None:
    missing = nyu_data / "data" / "depth_synthetic" / "sync" / "bathroom" / "rgb_00001.jpg"
    missing.unlink()
    with hydra_cfg(nyu_data, "experiment=smoke_mde") as cfg:
        dm: DepthDataModule = instantiate(cfg.data.module)
    with pytest.raises(DatasetFormatError, match="RGB image not found") as exc:
        dm.setup("fit")
    assert str(missing) in str(exc.value) and "nyudepthv2_train_files_with_gt.txt" in str(exc.value)


def test_max_depth_mismatch_warns_once(tmp_path: Path) -> None:
    with hydra_cfg(tmp_path, "experiment=smoke_mde", "model.overrides.max_depth=20") as cfg:
        model = build_model(cfg.model)
        task: DepthTask = instantiate(cfg.task.module, model=model, optimizer=instantiate(cfg.task.optimizer))
    with pytest.warns(UserWarning, match=r"max_depth 20 m differs from the depth_synthetic depth range \(max 10 m\)"):
        task.on_fit_start()
    with pytest.warns(UserWarning) as seen:  # once: a second fit start (or run) in the process stays quiet
        task.on_fit_start()
        warn_max_depth_mismatch(80, 10, "other")
    assert len(seen) == 1 and "other" in str(seen[0].message)
    assert not warn_max_depth_mismatch(10, 10.0, "same")


def test_depth_output_stays_float32_under_bf16_autocast(tmp_path: Path) -> None:
    with hydra_cfg(tmp_path, "experiment=smoke_mde") as cfg:
        task = instantiate(cfg.task.module, model=build_model(cfg.model), optimizer=instantiate(cfg.task.optimizer))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        depth = task(torch.randn(2, 3, 42, 56))
    assert depth.shape == (2, 42, 56) and depth.dtype == torch.float32


@pytest.mark.parametrize(
    ("experiment", "writer", "input_hw", "gt_hw"),
    [
        ("mde_nyu2kitti", write_kitti, (392, 518), (352, 1216)),  # KB crop, then Depth Anything's img_size 392x518
        ("mde_kitti2diode", write_diode, (392, 518), (48, 64)),
    ],
)
def test_data_configs_read_their_on_disk_layout(tmp_path: Path, experiment, writer, input_hw, gt_hw) -> None:
    writer(tmp_path / "data")
    with hydra_cfg(tmp_path, f"experiment={experiment}", "data.module.num_workers=0") as cfg:
        dm: DepthDataModule = instantiate(cfg.data.module)
        if experiment == "mde_nyu2kitti":  # the size the dry run and the benchmarks use (the fixture has KITTI's size)
            assert network_input_size(cfg.data.module) == input_hw
    dm.setup("fit")
    train = next(iter(dm.train_dataloader()))
    # the image at the network input, the ground truth at its own resolution (the loss upsamples to it)
    assert train["image"].shape == (2, 3, *input_hw) and train["depth"].shape == (2, *gt_hw)
    assert train["mask"].any() and not train["mask"].all()  # sparse / sky pixels are invalid
    val = next(iter(dm.val_dataloader()))
    assert val["image"].shape[-2:] == input_hw and val["depth"].shape == (1, *gt_hw)
    assert len(dm.val_set) == 2 and 0 < float(val["depth"].max()) < 80


TRANSFERS = {
    "mde_kitti2nyu": ("nyu", "kitti", "eigen", 10),
    "mde_nyu2kitti": ("kitti", "nyu", "garg", 80),
    "mde_kitti2diode": ("diode_outdoor", "kitti", "garg", 80),
    "mde_nyu2diode": ("diode_outdoor", "nyu", "garg", 80),
}


@pytest.mark.parametrize("experiment", sorted(TRANSFERS))
def test_transfer_experiments_compose(tmp_path: Path, experiment: str) -> None:
    data, source, crop, max_depth = TRANSFERS[experiment]
    with hydra_cfg(tmp_path, f"experiment={experiment}") as cfg:
        assert cfg.name == experiment and cfg.task.name == "mde" and cfg.peft.name == "onelora"
        assert cfg.model.name == "depth_anything_large" and cfg.data.name == data
        assert cfg.model.pretrained == str(tmp_path / "logs" / "sources" / f"depth_anything_large_{source}")
        assert f"experiment=mde_source_{source}" in cfg.model.pretrained_hint
        assert cfg.model.overrides.max_depth == max_depth and cfg.task.module.eval_crop == crop
        assert cfg.trainer.precision == "32-true" and cfg.trainer.max_epochs == 5  # ZoeDepth: use_amp false
        assert cfg.trainer.gradient_clip_val == 0.1 and cfg.model.gradient_checkpointing is False
        assert cfg.trainer.val_check_interval == 0.25  # ZoeDepth's validate_every
        # ZoeDepth's trainer validates with one forward pass; only its evaluate.py averages with a flip
        assert cfg.task.module.flip_eval is False and cfg.task.module.final_flip_eval is True
        assert cfg.data.module.batch_size == 16 and cfg.task.module.lr_groups is None
        assert isinstance(instantiate(cfg.data.module), DepthDataModule)


@pytest.mark.parametrize(("source", "hub"), [("kitti", "Outdoor"), ("nyu", "Indoor")])
def test_source_experiments_compose(tmp_path: Path, source: str, hub: str) -> None:
    with hydra_cfg(tmp_path, f"experiment=mde_source_{source}") as cfg:
        assert cfg.name == f"mde_source_{source}" and cfg.peft.name == "full" and cfg.data.name == source
        assert cfg.model.pretrained == f"depth-anything/Depth-Anything-V2-Metric-{hub}-Large-hf"
        assert cfg.export_to == str(tmp_path / "logs" / "sources" / f"depth_anything_large_{source}")
        assert dict(cfg.task.module.lr_groups) == {"backbone": 0.02, "neck": 0.02, "head": 0.02}
        assert cfg.trainer.precision == "32-true" and cfg.task.module.min_valid_pixels == 1


@pytest.mark.parametrize(("method", "count"), [("onelora", 221_184), ("lora", 442_368)])
def test_paper_model_counts(tmp_path: Path, method: str, count: int) -> None:
    """1LoRA = the paper's 221.18K; LoRA differs from its 393.22K since transformers splits DINOv2's fused qkv."""
    with hydra_cfg(tmp_path, "experiment=mde_kitti2nyu", f"peft={method}", "dry_run=true") as cfg:
        values = dry_run(cfg)
    assert values["peft_params"] == count and values["head_params"] == 0 and values["adapted_layers"] == 144
