"""Image generation on CPU: the Food-101 loader, the shared DiT class table, the DiT loss, FID, the smoke run."""

from __future__ import annotations

import copy
import csv
import json
import math
import pickle
import re
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from helpers import ROOT, hydra_cfg
from PIL import Image

from onelora.commands.run import dry_run
from onelora.data.errors import DatasetFormatError
from onelora.data.food101 import Food101DataModule, center_crop_arr, read_food101, to_tensor
from onelora.data.synthetic import FOOD_CLASSES as CLASSES
from onelora.data.synthetic import write_food101
from onelora.errors import ConfigError
from onelora.models import build_model
from onelora.models.dit import class_embedder, embeddings_shared, share_dit_embeddings
from onelora.peft import AdaptedLinear
from onelora.run.build import build_peft_model
from onelora.run.train import train
from onelora.tasks.diffusion import ParameterEMA, classifier_free_guidance, guided_channel_count, to_uint8
from onelora.tasks.generation import GenerationTask, RandomConvFeatures, VariationalBound


@pytest.fixture
def food(tmp_path: Path) -> Path:
    write_food101(tmp_path / "data" / "food101_synthetic")
    return tmp_path


# --- data ----------------------------------------------------------------------------------------
def test_center_crop_arr_is_adm() -> None:
    img = Image.fromarray(np.arange(90 * 160 * 3, dtype=np.uint32).reshape(90, 160, 3).astype(np.uint8))
    out = center_crop_arr(img, 16)  # 160x90 -> BOX 80x45 -> 40x22 -> BICUBIC 29x16 -> crop 16x16
    assert out.size == (16, 16)
    step = img.resize((80, 45), Image.BOX).resize((40, 22), Image.BOX).resize((29, 16), Image.BICUBIC)
    assert np.array_equal(np.asarray(out), np.asarray(step)[:, 6:22])


def test_food101_loader_reads_the_layout(food: Path) -> None:
    dm = Food101DataModule(
        str(food / "data/food101_synthetic/food-101"), num_classes=3, image_size=16, batch_size=4, num_workers=0
    )
    dm.setup("fit")
    assert dm.class_names == CLASSES and len(dm.train_set) == 12 and len(dm.val_set) == 6
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 16, 16) and batch["image"].dtype == torch.float32
    assert -1.0 <= float(batch["image"].min()) and float(batch["image"].max()) <= 1.0
    val = next(iter(dm.val_dataloader()))
    assert val["label"].tolist() == [0, 0, 1, 1]  # test.txt order, no shuffling
    # the ADM crop of the file, no flip, scaled to [-1, 1]
    path = dm.val_set.items[0][0]
    expected = np.asarray(center_crop_arr(Image.open(path).convert("RGB"), 16), dtype=np.float32) / 127.5 - 1
    assert torch.allclose(val["image"][0], torch.from_numpy(expected).permute(2, 0, 1))
    sub = Food101DataModule(str(food / "data/food101_synthetic/food-101"), num_classes=2, classes=2, train_per_class=1,
                            val_per_class=1, image_size=16, batch_size=2, num_workers=0)  # fmt: skip
    sub.setup("fit")
    assert len(sub.train_set) == 2 and [lab for _, lab in sub.val_set.items] == [0, 1]


def test_food101_bad_input_names_the_file(food: Path) -> None:
    root = food / "data/food101_synthetic/food-101"
    with pytest.raises(DatasetFormatError, match=re.escape(str(food / "nowhere" / "meta"))):
        read_food101(food / "nowhere", "train")
    for f in (root / "images" / "beignets").iterdir():  # a class listed in train.txt without its images
        f.unlink()
    (root / "images" / "beignets").rmdir()
    with pytest.raises(DatasetFormatError, match=r"'beignets'.*meta/train\.txt.*images/beignets"):
        read_food101(root, "train")
    write_food101(food / "data" / "food101_synthetic")
    victim = next((root / "images" / "ramen").iterdir())
    victim.unlink()
    with pytest.raises(DatasetFormatError, match=re.escape(str(victim))):
        read_food101(root, "test" if victim.stem in (root / "meta/test.txt").read_text() else "train")
    write_food101(food / "data" / "food101_synthetic")
    with pytest.raises(DatasetFormatError, match="gives 3 classes but data.num_classes=101"):
        Food101DataModule(str(root), num_classes=101, image_size=16).setup("fit")


def test_latent_cache_is_written_once_and_read(food: Path) -> None:
    with hydra_cfg(food, "experiment=smoke_generation", "data.module.cache_latents=true") as cfg:
        from hydra.utils import instantiate

        dm = instantiate(cfg.data.module)
        dm.prepare_data()
        assert dm.cache_seconds is not None
        files = list((food / "cache" / "food101_latents").glob("*.pt"))
        assert len(files) == 1
        dm2 = instantiate(cfg.data.module)
        dm2.prepare_data()
        assert dm2.cache_seconds is None  # reused
        dm2.setup("fit")
    data = torch.load(files[0], weights_only=True)
    assert data["moments"].shape == (12, 2, 8, 8, 8) and data["moments"].dtype == torch.float16  # image + mirror
    batch = next(iter(dm2.train_dataloader()))
    assert set(batch) == {"moments", "label"} and batch["moments"].shape == (4, 8, 8, 8)


# --- the model: one shared class table, resized, trained by every method ---------------------------
def tiny_spec(tmp_path: Path, num_classes: int = 3) -> dict:
    with hydra_cfg(tmp_path, "model=dit_tiny", f"model.post_build.num_classes={num_classes}") as cfg:
        from omegaconf import OmegaConf

        return OmegaConf.to_container(cfg.model, resolve=True)


def test_class_table_resized_and_shared(tmp_path: Path) -> None:
    spec = tiny_spec(tmp_path)
    plain = build_model({**spec, "post_build": None})
    old_null = class_embedder(plain).embedding_table.weight[10].clone()
    torch.manual_seed(0)
    model = share_dit_embeddings(plain, num_classes=3)
    emb = class_embedder(model)
    assert embeddings_shared(model) and emb.num_classes == 3 and model.config.num_embeds_ada_norm == 3
    assert emb.embedding_table.weight.shape == (4, 16)
    assert torch.equal(emb.embedding_table.weight[3], old_null)  # the pretrained null row is kept
    assert float(emb.embedding_table.weight[:3].detach().std()) == pytest.approx(0.02, rel=0.5)
    tables = [n for n, _ in model.named_parameters() if "embedding_table" in n]
    assert tables == ["transformer_blocks.0.norm1.emb.class_embedder.embedding_table.weight"]
    # the same through the model config's post_build hook
    built = build_model(spec)
    assert embeddings_shared(built) and class_embedder(built).embedding_table.num_embeddings == 4


def test_shared_model_exports_and_loads_back(tmp_path: Path) -> None:
    from diffusers import DiTTransformer2DModel

    model = build_model(tiny_spec(tmp_path)).eval()
    model.save_pretrained(tmp_path / "export")  # safetensors refuses shared tensors: saved untied
    assert embeddings_shared(model)
    loaded = DiTTransformer2DModel.from_pretrained(tmp_path / "export").eval()
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([3, 500]), torch.tensor([0, 3])
    with torch.no_grad():
        assert torch.allclose(model(x, timestep=t, class_labels=y).sample, loaded(x, timestep=t, class_labels=y).sample)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):  # the sharing survives copies
        assert embeddings_shared(clone) and clone.save_pretrained.model is clone


METHODS = ["onelora", "lora", "vera", "mora1", "bitfit", "difffit", "full", "head"]


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_one_class_table(food: Path, method: str) -> None:
    with hydra_cfg(food, "experiment=smoke_generation", f"peft={method}") as cfg:
        model, counts = build_peft_model(cfg)
    table = "transformer_blocks.0.norm1.emb.class_embedder.embedding_table.weight"
    params = dict(model.named_parameters())
    assert params[table].requires_grad and counts.head == 4 * 16 and embeddings_shared(model)
    assert sum("embedding_table" in n for n in params) == 1
    trained = {n for n, p in params.items() if p.requires_grad} - {table}
    timestep_mlp = {n for n in params if "timestep_embedder" in n}
    if method == "full":
        assert trained == set(params) - {table}
    elif method == "head":
        assert not trained
    else:
        assert not trained & timestep_mlp  # the paper's layer set: the timestep MLP stays frozen
        suffixes = {"onelora": (".adapter.b",), "bitfit": (".bias",), "difffit": (".bias", ".gamma"),
                    "lora": (".adapter.lora_A", ".adapter.lora_B"), "vera": (".adapter.lambda_b", ".adapter.lambda_d"),
                    "mora1": (".adapter.M",)}[method]  # fmt: skip
        assert trained and all(n.endswith(suffixes) for n in trained), sorted(trained)[:5]
        assert counts.adapted_layers == 2 * 7 + 2  # q k v out ff0 ff2 adaLN per block, proj_out_1, proj_out_2
    # one DiT training step: gradients reach exactly what trains, the table among them
    task = GenerationTask(model, cfg.model.vae, num_classes=3, optimizer=torch.optim.AdamW,
                          fid={"feature": RandomConvFeatures(4), "num_samples": 8})  # fmt: skip
    task.setup("fit")
    batch = {"image": torch.rand(4, 3, 16, 16) * 2 - 1, "label": torch.tensor([0, 1, 2, 0])}
    task.class_dropout = 0.0
    task.training_loss(batch).backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads == {n for n, p in model.named_parameters() if p.requires_grad}
    assert params[table].grad.abs().sum() > 0 and all(not p.requires_grad for p in task.vae.parameters())


def test_paper_table_s8_counts(tmp_path: Path) -> None:
    """Table S8's params: the dry run's trainable count (class table included) for 1LoRA/BitFit; all seven
    methods from the same layer set with the original DiT's fused qkv (142 layers) plus the 102 x 1152 table."""
    counts = {}
    for method in ("onelora", "bitfit", "difffit"):
        with hydra_cfg(tmp_path, "model=dit_xl_2_256", f"peft={method}", "dry_run=true") as cfg:
            counts[method] = dry_run(cfg)
    head = 102 * 1152
    assert counts["onelora"]["head_params"] == head and counts["onelora"]["adapted_layers"] == 28 * 7 + 2
    assert counts["onelora"]["trainable_params"] == counts["bitfit"]["trainable_params"] == 603_680
    # the paper's layout: per block qkv (1152->3456), proj, fc1, fc2, adaLN (1152->6912); final adaLN and linear
    layers = 28 * [(1152, 3456), (1152, 1152), (1152, 4608), (4608, 1152), (1152, 6912)] + [(1152, 2304), (1152, 32)]
    r = lambda d, even: (lambda x: x // 2 * 2 if even else x)(int(math.sqrt(d) + 0.5))  # noqa: E731
    ours = {
        "onelora": sum(d for _, d in layers), "bitfit": sum(d for _, d in layers),
        "vera": sum(d + 1 for _, d in layers), "lora": sum(k + d for k, d in layers),
        "mora1": sum(r(d, False) ** 2 for _, d in layers), "mora6": sum(r(d, True) ** 2 for _, d in layers),
        "difffit": 2 * sum(d for _, d in layers),
    }  # fmt: skip
    assert counts["difffit"]["peft_params"] == ours["difffit"]  # split q, k, v: d-only counts agree
    with open(ROOT / "results/paper/tableS8.csv") as f:
        paper = {row["method"]: (int(row["params"]), row["params_printed"]) for row in csv.DictReader(f)}
    for method, count in ours.items():
        printed, text = paper[method]
        tol = 5_000 if text.endswith("M") else 5  # the paper prints 2 decimals of K or M
        assert abs(count + head - printed) <= tol, (method, count + head, text)


# --- loss, FID ---------------------------------------------------------------------------------------
def test_hybrid_loss_trains_sigma_only_through_the_bound() -> None:
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    vb = VariationalBound(sched.betas)
    x0, noise = torch.randn(3, 4, 4, 4), torch.randn(3, 4, 4, 4)
    t = torch.tensor([0, 10, 999])
    xt = sched.add_noise(x0, noise, t)
    eps = noise.clone().requires_grad_(True)
    sigma = torch.zeros(3, 4, 4, 4, requires_grad=True)
    bits = vb(eps.detach(), sigma, x0, xt, t)
    bits.sum().backward()
    assert eps.grad is None and sigma.grad is not None and bits.shape == (3,)
    assert float(bits[1:].detach().min()) >= 0  # a KL; exact ε gives the true mean, the variance term remains
    # the learned-range variance equals diffusers' DDPM learned_range at the same frac (t > 0)
    sched.set_timesteps(1000)
    v = torch.tensor(0.3)
    ours = (v + 1) / 2 * torch.log(sched.betas[10].double()) + (1 - v) / 2 * vb.tables["post_logvar"][10]
    assert float(ours) == pytest.approx(float(sched._get_variance(10, v, "learned_range")), rel=1e-4)


def test_fid_identical_sets_zero_shifted_positive() -> None:
    from torchmetrics.image.fid import FrechetInceptionDistance

    torch.manual_seed(0)
    fid = FrechetInceptionDistance(feature=RandomConvFeatures(8), normalize=True)
    real = torch.rand(64, 3, 16, 16)
    fid.update(real, real=True)
    fid.update(real, real=False)
    assert abs(float(fid.compute())) < 1e-3
    fid.reset()
    fid.update(real, real=True)
    fid.update((real * 0.6 + 0.4).clamp(0, 1), real=False)
    assert float(fid.compute()) > 1e-2


def test_fewer_samples_than_features_warns(tmp_path: Path) -> None:
    model = build_model(tiny_spec(tmp_path))
    task = GenerationTask(model, tiny_spec(tmp_path)["vae"], num_classes=3, optimizer=torch.optim.AdamW,
                          fid={"feature": RandomConvFeatures(16), "num_samples": 8})  # fmt: skip
    with pytest.warns(UserWarning, match="fewer samples than feature dimensions"):
        task.setup("fit")
    with pytest.raises(ValueError, match="classes \\+ 1 null row"):
        GenerationTask(model, {}, num_classes=5, optimizer=torch.optim.AdamW)


@pytest.mark.parametrize(
    "sampler",
    [{"name": "ddim", "steps": 3, "guidance_scale": 1.0}, {"name": "ddpm", "steps": 3, "guidance_scale": 4.0}],
)
def test_generate_is_seeded(tmp_path: Path, sampler: dict) -> None:
    spec = tiny_spec(tmp_path)
    model = build_model(spec).eval()
    task = GenerationTask(model, spec["vae"], num_classes=3, optimizer=torch.optim.AdamW, sampler=sampler,
                          fid={"feature": RandomConvFeatures(4), "num_samples": 8})  # fmt: skip
    task.setup("fit")
    labels = torch.tensor([0, 1, 2])
    a = task.generate(labels, torch.Generator().manual_seed(1))
    b = task.generate(labels, torch.Generator().manual_seed(1))
    assert a.shape == (3, 3, 16, 16) and torch.equal(a, b) and torch.isfinite(a).all()


# --- DiT's sampling protocol (numbers from facebookresearch/DiT run on the same inputs) ------------------
def test_uint8_conversion_is_dits() -> None:
    """sample_ddp.py: clamp(127.5·x + 128, 0, 255).to(uint8) gives these; rounding would give 11 for the first."""
    x = torch.tensor([-0.9098039269447327, -1.0, 1.0, 0.0, -1.2, 1.3, 0.99607843])
    assert to_uint8(x).tolist() == [12, 0, 255, 128, 0, 255, 255]
    levels = torch.arange(256, dtype=torch.uint8).reshape(1, 16, 16).expand(3, 16, 16)
    real = to_tensor(Image.fromarray(levels.permute(1, 2, 0).numpy()))  # the loader's [-1, 1] tensor
    assert torch.equal(to_uint8(real), levels)  # real images come back to their own uint8 values


def test_guidance_is_dits_forward_with_cfg() -> None:
    """DiT's forward_with_cfg at scale 1.5 on a fixed model output (rows: 2 conditional, then 2 unconditional):
    channels 0-2 guided, channel 3 and the variance channels from the conditional rows."""
    out = (torch.arange(32, dtype=torch.float32).reshape(4, 8, 1, 1) ** 1.5 / 10).chunk(2)
    official = [
        [-3.200000286102295, -3.354640483856201, -3.3941125869750977, 0.5196152329444885, 0.800000011920929,
         1.1180340051651, 1.469693899154663, 1.8520259857177734],
        [-2.484663963317871, -2.200000762939453, -1.8853082656860352, 3.648287296295166, 4.156921863555908,
         4.687216758728027, 5.238320350646973, 5.809474945068359],
    ]  # fmt: skip
    dit = classifier_free_guidance(*out, 1.5, guided_channel_count(3, 4))
    assert torch.allclose(dit[:, :, 0, 0], torch.tensor(official), rtol=0, atol=1e-6)
    every = classifier_free_guidance(*out, 1.5, guided_channel_count("all", 4))  # diffusers' DiTPipeline
    cond, uncond = out
    assert torch.equal(every[:, :4], uncond[:, :4] + 1.5 * (cond[:, :4] - uncond[:, :4]))
    assert torch.equal(every[:, 4:], cond[:, 4:]) and torch.equal(every[:, :3], dit[:, :3])
    assert not torch.equal(every[:, 3], dit[:, 3])
    for bad in (0, 5, "first3", 2.5):
        with pytest.raises(ConfigError, match="guidance_channels"):
            guided_channel_count(bad, 4)


def test_ema_is_dits_update_and_sampling_swaps_exactly() -> None:
    """DiT's update_ema (decay 0 at start, then 0.9) over weights [1, -2] -> [3, 0], [-1, 4], [2, 2] and a bias
    0.5 -> 1.5, 2.5, 3.5 gives [1.082, -0.898] and 1.061. `applied()` puts the EMA in, then restores bit for bit."""
    model = torch.nn.Sequential(torch.nn.Linear(2, 1), torch.nn.Linear(1, 1))
    model[1].requires_grad_(False)  # frozen: not in the EMA
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -2.0]]))
        model[0].bias.fill_(0.5)
    ema = ParameterEMA(model, decay=0.9)
    assert set(ema.shadow) == {"0.weight", "0.bias"}
    for w in ([[3.0, 0.0]], [[-1.0, 4.0]], [[2.0, 2.0]]):
        with torch.no_grad():
            model[0].weight.copy_(torch.tensor(w))
            model[0].bias.add_(1.0)
        ema.update()
    assert ema.shadow["0.weight"].tolist() == [[1.0819998979568481, -0.8979999423027039]]
    assert ema.shadow["0.bias"].tolist() == [1.0609999895095825]
    model.to(torch.bfloat16)
    raw = [p.detach().clone() for p in model.parameters()]
    with ema.applied():
        assert torch.equal(model[0].weight, ema.shadow["0.weight"].to(torch.bfloat16))
    assert all(torch.equal(a, b) for a, b in zip(raw, model.parameters()))
    assert ema.shadow["0.bias"].dtype == torch.float32 and ema.shadow["0.bias"].item() == pytest.approx(1.061)
    with pytest.raises(ConfigError, match="EMA does not hold the trained parameters"):
        ParameterEMA(model, 0.9, state={"0.weight": torch.zeros(1, 2)})


def test_generate_guides_three_channels_by_default(tmp_path: Path) -> None:
    spec = tiny_spec(tmp_path)
    model = build_model(spec).eval()
    for p in model.parameters():  # a random, non-zero output head, so the guided channels matter
        torch.nn.init.normal_(p, std=0.2) if p.dim() > 1 else None
    images = {}
    for channels in (3, 4, "all"):
        task = GenerationTask(model, spec["vae"], num_classes=3, optimizer=torch.optim.AdamW,
                              sampler={"name": "ddpm", "steps": 2, "guidance_scale": 4.0, "guidance_channels": channels},
                              fid={"feature": RandomConvFeatures(4), "num_samples": 8})  # fmt: skip
        torch.manual_seed(0)  # the same tiny random VAE each time
        task.setup("fit")
        images[channels] = task.generate(torch.tensor([0, 1]), torch.Generator().manual_seed(3))
    assert torch.equal(images[4], images["all"]) and not torch.allclose(images[3], images["all"])


def test_paper_experiment_follows_dit(tmp_path: Path) -> None:
    with hydra_cfg(tmp_path, "experiment=gen_dit_food101") as cfg:
        m = cfg.task.module
        assert cfg.trainer.precision == "32-true" and m.tf32 and m.ema.enabled and m.ema.decay == 0.9999
        assert (m.sampler.name, m.sampler.steps, m.sampler.guidance_scale, m.sampler.guidance_channels) == (
            "ddpm", 250, 1.5, 3,
        )  # fmt: skip
        assert m.fid.num_samples == 10_000 and cfg.trainer.max_steps == 24_000 and cfg.data.module.batch_size == 32


def test_too_few_fid_samples_are_rejected_before_training(food: Path) -> None:
    with hydra_cfg(food, "experiment=smoke_generation", "task.module.fid.num_samples=1") as cfg:
        with pytest.raises(ConfigError, match="fid.num_samples=1 is too small"):
            train(cfg)
    assert not (food / "run" / "checkpoints").exists() or not any((food / "run" / "checkpoints").iterdir())


# --- the smoke run -------------------------------------------------------------------------------
def test_smoke_generation(food: Path) -> None:
    with hydra_cfg(food, "experiment=smoke_generation", "peft=onelora", "trainer.max_epochs=2") as cfg:
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        before, _ = build_peft_model(cfg)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            record, task = train(cfg)
    assert record["status"] == "ok" and record["metric_name"] == "fid" and record["metric_direction"] == "min"
    assert (
        math.isfinite(record["metric_best"]) and record["metrics"]["fid"] >= record["metric_best"]
    )  # best of two evaluations
    # the real features are computed once and kept: 6 test images at the second evaluation too
    assert record["metrics"]["fid_samples"] == 8 and record["metrics"]["fid_real_images"] == 6
    assert record["head_params"] == 4 * 16 and record["peft_params"] > 0
    assert json.loads((food / "run" / "result.json").read_text())["status"] == "ok"
    grids = sorted((food / "run" / "samples").glob("*.png"))
    assert [g.name for g in grids] == ["epoch0_step3.png", "epoch1_step6.png"]  # one per evaluation
    with Image.open(grids[0]) as im:
        assert im.size == (4 * 16 + 5 * 2, 2 * 16 + 3 * 2)  # 8 samples in rows of 4, torchvision's 2-pixel padding
    after = dict(task.model.named_parameters())
    for name, p in before.named_parameters():
        assert torch.equal(p, after[name]) != p.requires_grad, name
    assert all(isinstance(m, AdaptedLinear) for n, m in task.model.named_modules() if n.endswith("to_q"))
    ckpt = torch.load(food / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert not any(k.startswith(("vae.", "fid.")) for k in ckpt["state_dict"])  # frozen VAE, FID net: not saved


def test_sanity_check_does_not_feed_the_real_statistics(food: Path) -> None:
    """trainer.num_sanity_val_steps=2 once gave 12 real images (6 expected) and another FID: the run must equal
    the one without a sanity check."""
    records = []
    for steps in (2, 0):
        with hydra_cfg(food, "experiment=smoke_generation", f"trainer.num_sanity_val_steps={steps}",
                       f"paths.output_dir={food / f'run_sanity{steps}'}") as cfg:  # fmt: skip
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                records.append(train(cfg)[0])
    with_sanity, without = (r["metrics"] for r in records)
    assert with_sanity["fid_real_images"] == without["fid_real_images"] == 6
    assert with_sanity["fid"] == without["fid"]


def test_smoke_with_latent_cache_and_ema(food: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    overrides = ("experiment=smoke_generation", "peft=bitfit", "data.module.cache_latents=true",
                 "task.module.ema.enabled=true",
                 "task.module.ema.decay=0.5")  # fmt: skip
    table = "transformer_blocks.0.norm1.emb.class_embedder.embedding_table.weight"
    sampled_from: list[bool] = []
    generate = GenerationTask.generate

    def recording_generate(self: GenerationTask, *args, **kwargs):  # which weights the evaluation samples from
        now = dict(self.model.named_parameters())[table]
        sampled_from.append(torch.equal(now, self.ema.shadow[table]))
        return generate(self, *args, **kwargs)

    monkeypatch.setattr(GenerationTask, "generate", recording_generate)
    with hydra_cfg(food, *overrides) as cfg:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            record, task = train(cfg)
    assert record["status"] == "ok" and math.isfinite(record["metric_best"])
    assert sampled_from == [True]  # one batch of 8 samples, from the EMA
    assert len(list((food / "cache" / "food101_latents").glob("*.pt"))) == 1
    ckpt = torch.load(food / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    trained = {n for n, p in task.model.named_parameters() if p.requires_grad}
    assert set(ckpt["onelora_ema"]) == trained
    now = dict(task.model.named_parameters())[table]
    assert not torch.equal(ckpt["onelora_ema"][table], now.detach())  # an average, not the last weights
    task.on_load_checkpoint(ckpt)
    task.on_fit_start()
    assert all(torch.equal(task.ema.shadow[n].cpu(), ckpt["onelora_ema"][n]) for n in trained)
