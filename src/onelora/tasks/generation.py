"""Class-conditional image generation (the paper's DiT-XL/2 on Food-101): DiT's training loss, FID, sample grids.

Training follows DiT (`facebookresearch/DiT`, `train.py` and `diffusion/`): images are encoded by the frozen
VAE (latent = posterior sample × scaling factor 0.18215), noised at t ~ U{0..999} on a 1000-step linear DDPM
schedule (β 1e-4 → 0.02), and the model predicts the noise. With learned sigma (DiT-XL/2: 8 output channels)
the loss is DiT's hybrid `mse + vb`: the MSE on the first `in_channels` channels (ε) plus the variational-bound
term that trains the other channels (the interpolation between β_t and the posterior variance), with the mean
detached so that only the sigma channels get its gradient (guided-diffusion's `training_losses`, LEARNED_RANGE);
`loss: mse` drops the bound (the sigma channels then get no gradient). Labels are replaced by the null class with
probability `class_dropout` (0.1) once per sample, here, rather than inside the model: diffusers' `LabelEmbedding`
draws its own drop in every block, which with the shared table would drop a label in some blocks only.

Validation generates `fid.num_samples` class-balanced samples (labels i mod C, fixed seeds) with a diffusers
scheduler: `sampler.name` ddpm (learned-range variance, DiT's respacing) or ddim (η = 0), `sampler.steps`, and
classifier-free `sampler.guidance_scale` on the first `sampler.guidance_channels` latent channels: 3 as DiT's
`forward_with_cfg` (the default), or `all` as diffusers' DiTPipeline. Samples come from an EMA of the trained
parameters (`ema`, decay 0.9999, as DiT and DiffFit) when enabled. They are decoded by the VAE, converted to uint8
as DiT (clamp(127.5·x + 128, 0, 255), truncated) and compared by torchmetrics' FID with the real test images of the
validation loader, whose features are computed once and kept (the sanity check's batches are dropped). The first
`grid.size` samples (fixed classes and seeds) are saved as `<run dir>/samples/epoch<k>_step<s>.png` at every
evaluation. The VAE and the sampler run in the trainer's precision (fp32 by default, as DiT, with TF32 matmuls
unless `tf32: false`), FID features in fp32. DiT's pieces (bound, sampler, guidance, uint8, EMA): `diffusion.py`.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .base import PeftTask
from .diffusion import (  # re-exported: configs and tests name them here
    NOISE_SCHEDULE,
    ParameterEMA,
    VariationalBound,
    classifier_free_guidance,
    guided_channel_count,
    sampling_scheduler,
    to_uint8,
)

__all__ = ["GenerationTask", "RandomConvFeatures", "VariationalBound", "to_uint8"]

log = logging.getLogger("onelora")


class RandomConvFeatures(nn.Module):
    """A fixed random feature extractor (seeded, no download) for FID in tests and smoke runs.

    Takes uint8 or [0, 1] float images (B, 3, H, W), returns (B, num_features). Its FID is a sanity check of the
    pipeline, not comparable with Inception FID.
    """

    def __init__(self, num_features: int = 16, seed: int = 0) -> None:
        super().__init__()
        self.num_features = num_features
        g = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(3, num_features, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g) / 3.0)
            self.conv.bias.copy_(torch.randn(num_features, generator=g) * 0.1)
        self.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        return torch.tanh(self.conv(2 * x - 1)).mean(dim=(2, 3))


# --- the task --------------------------------------------------------------------------------------
class GenerationTask(PeftTask):
    def __init__(
        self,
        model: nn.Module,
        vae: Mapping[str, Any],
        num_classes: int,
        loss: str = "hybrid",
        class_dropout: float = 0.1,
        noise_schedule: Mapping[str, Any] | None = None,
        sampler: Mapping[str, Any] | None = None,
        fid: Mapping[str, Any] | None = None,
        grid: Mapping[str, Any] | None = None,
        ema: Mapping[str, Any] | None = None,
        sample_seed: int = 0,
        tf32: bool = True,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("metric_name", "fid")
        kwargs.setdefault("metric_direction", "min")
        super().__init__(model, **kwargs)
        from diffusers import DDPMScheduler

        from ..models.dit import class_embedder

        if loss not in ("hybrid", "mse"):
            raise ConfigError(f"task.module.loss must be hybrid or mse, got {loss!r}")
        table = class_embedder(model)
        if table.embedding_table.num_embeddings != num_classes + 1 or table.num_classes != num_classes:
            raise ConfigError(
                f"the model's class table has {table.embedding_table.num_embeddings} rows, the task needs "
                f"{num_classes} classes + 1 null row: the model config's post_build "
                "(onelora.models.dit.share_dit_embeddings) sizes it"
            )
        table.dropout_prob = 0.0  # the task drops labels, once per sample (see the module docstring)
        self.vae_spec = dict(vae)
        self.num_classes, self.null_class, self.class_dropout = num_classes, num_classes, class_dropout
        cfg = getattr(model, "config", {})
        self.in_channels = int(cfg["in_channels"])
        self.learned_sigma = int(cfg.get("out_channels") or self.in_channels) == 2 * self.in_channels
        self.latent_size = int(cfg["sample_size"])
        self.loss_kind = loss if self.learned_sigma else "mse"
        self.noise_schedule = {**NOISE_SCHEDULE, **dict(noise_schedule or {})}
        self.noise_scheduler = DDPMScheduler(**self.noise_schedule, prediction_type="epsilon", clip_sample=False)
        self.vb = VariationalBound(self.noise_scheduler.betas)
        self.sampler_cfg = {
            "name": "ddpm", "steps": 250, "guidance_scale": 1.5, "guidance_channels": 3, **dict(sampler or {})
        }  # fmt: skip
        sampling_scheduler(self.sampler_cfg["name"], self.noise_schedule, self.learned_sigma)  # a bad name fails now
        self.guided_channels = guided_channel_count(self.sampler_cfg["guidance_channels"], self.in_channels)
        self.fid_cfg = {
            "feature": 2048,
            "num_samples": 10_000,
            "batch_size": 32,
            "weights_path": None,
            **dict(fid or {}),
        }
        for key in ("num_samples", "batch_size"):
            if int(self.fid_cfg[key]) < (2 if key == "num_samples" else 1):  # FID needs a covariance: 2 samples
                raise ConfigError(
                    f"task.module.fid.{key}={self.fid_cfg[key]} is too small: FID needs at least 2 generated samples "
                    "(a covariance) and a batch of at least 1; the paper setting is task.module.fid.num_samples=10000"
                )
        self.grid_cfg = {"size": 16, "nrow": 8, **dict(grid or {})}
        self.ema_cfg = {"enabled": True, "decay": 0.9999, **dict(ema or {})}
        self.sample_seed = sample_seed
        if tf32 and torch.cuda.is_available():  # DiT's train.py and sample_ddp.py: fp32, TF32 matmuls and convolutions
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        self.vae: nn.Module | None = None
        self.fid: nn.Module | None = None
        self._real_done = False  # real (test) features computed: kept across evaluations
        self._real_updated = False
        self.ema: ParameterEMA | None = None
        self._ema_state: dict[str, Tensor] | None = None  # from a checkpoint, applied at fit start
        self._ema_step = -1
        self.grids: list[Path] = []

    # --- parts built at fit time (downloads and moves happen there) -----------------------------
    def setup(self, stage: str) -> None:
        from ..models import build_model

        if self.vae is None:
            self.vae = build_model(self.vae_spec).eval().requires_grad_(False)
            self.scale = float(self.vae.config.scaling_factor)
        if self.fid is None:
            self.fid = self.build_fid()

    def build_fid(self) -> nn.Module:
        from torchmetrics.image.fid import FrechetInceptionDistance

        from ..models import ModelError

        feature, n = self.fid_cfg["feature"], int(self.fid_cfg["num_samples"])
        if isinstance(feature, nn.Module):
            feature.requires_grad_(False)
            fid = FrechetInceptionDistance(feature=feature, normalize=True, reset_real_features=False)
        else:
            try:
                fid = FrechetInceptionDistance(
                    feature=int(feature), reset_real_features=False,
                    feature_extractor_weights_path=self.fid_cfg.get("weights_path"),
                )  # fmt: skip
            except ModuleNotFoundError:
                raise ModelError(
                    "FID with Inception features (task.module.fid.feature=2048) needs torch-fidelity: "
                    "pip install torch-fidelity (or torchmetrics[image])"
                ) from None
        fid.requires_grad_(False)
        dim = int(fid.real_features_sum.numel())
        if n < dim:
            warnings.warn(
                f"FID from {n} generated samples with {dim}-dimensional features: fewer samples than feature "
                f"dimensions leave the covariance singular and the estimate biased (too high); use at least {dim} "
                "(the paper setting: task.module.fid.num_samples=10000)",
                stacklevel=2,
            )
        return fid

    # --- training -------------------------------------------------------------------------------
    def latents(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Scaled VAE latents: a posterior sample from cached moments, or from encoding the images."""
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        with torch.no_grad():
            if "moments" in batch:
                z = DiagonalGaussianDistribution(batch["moments"].float()).sample()
            else:
                z = self.vae.encode(batch["image"]).latent_dist.sample()
        return z.float() * self.scale

    def training_loss(self, batch: Mapping[str, Tensor]) -> Tensor:
        x0 = self.latents(batch)
        labels = batch["label"]
        if self.class_dropout > 0:
            drop = torch.rand(labels.shape, device=labels.device) < self.class_dropout
            labels = torch.where(drop, torch.full_like(labels, self.null_class), labels)
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (x0.shape[0],), device=x0.device)
        noise = torch.randn_like(x0)
        xt = self.noise_scheduler.add_noise(x0, noise, t)
        out = self.model(xt, timestep=t, class_labels=labels).sample.float()
        eps = out[:, : self.in_channels]
        loss = ((noise - eps) ** 2).mean(dim=(1, 2, 3))
        if self.loss_kind == "hybrid":
            loss = loss + self.vb(eps.detach(), out[:, self.in_channels :], x0, xt, t)
        return loss.mean()

    def on_fit_start(self) -> None:
        if self.ema_cfg["enabled"]:  # DiT: the EMA starts as a copy of the model (or the checkpoint's EMA)
            self.ema = ParameterEMA(self.model, self.ema_cfg["decay"], self._ema_state)
            self._ema_state = None

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.ema is not None and self.global_step != self._ema_step:  # after each optimizer step, as DiT
            self._ema_step = self.global_step
            self.ema.update()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.ema is not None:
            checkpoint["onelora_ema"] = self.ema.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.ema, self._ema_state = None, checkpoint.get("onelora_ema")

    # --- evaluation: real features once, then N generated samples per evaluation ------------------
    def validation_update(self, batch: Mapping[str, Tensor]) -> None:
        if not self._real_done:  # in the sanity check too (it tests the feature extractor), dropped after it
            real = self.kept(batch["image"])  # each image once under DDP
            if len(real):
                self.fid_update(to_uint8(real), real=True)
            self._real_updated = True
        return None

    def drop_real_features(self) -> None:
        """Forget the real images' statistics (those of the sanity check's batches, which are not the reference)."""
        self.fid.reset_real_features = True
        try:
            self.fid.reset()
        finally:
            self.fid.reset_real_features = False
        self._real_updated = False

    def fid_update(self, images: Tensor, real: bool) -> None:
        """uint8 images into the FID state; feature extraction in fp32 for real and generated images alike."""
        x = images.float() / 255.0 if self.fid.used_custom_model else images
        with torch.autocast(images.device.type, enabled=False):
            self.fid.update(x, real=real)

    @torch.no_grad()
    def generate(self, labels: Tensor, generator: torch.Generator) -> Tensor:
        """Decoded images (about [-1, 1]) for `labels`, from noise drawn with `generator` (CPU: device-independent)."""
        sched = sampling_scheduler(self.sampler_cfg["name"], self.noise_schedule, self.learned_sigma)
        sched.set_timesteps(int(self.sampler_cfg["steps"]), device=labels.device)
        scale, c = float(self.sampler_cfg["guidance_scale"]), self.in_channels
        n = labels.shape[0]
        shape = (n, c, self.latent_size, self.latent_size)
        x = torch.randn(shape, generator=generator).to(labels.device)
        null = torch.full_like(labels, self.null_class)
        for t in sched.timesteps:
            xin = sched.scale_model_input(x, t)
            if scale > 1.0:
                out = self.model(
                    torch.cat([xin, xin]), timestep=t.expand(2 * n), class_labels=torch.cat([labels, null])
                )
                cond, uncond = out.sample.float().chunk(2)
                out = classifier_free_guidance(cond, uncond, scale, self.guided_channels)
            else:
                out = self.model(xin, timestep=t.expand(n), class_labels=labels).sample.float()
            if getattr(sched.config, "variance_type", None) != "learned_range":
                out = out[:, :c]
            x = sched.step(out, t, x, generator=generator).prev_sample
        return self.vae.decode(x / self.scale).sample.float()  # to_uint8 clamps, as DiT

    def compute_metrics(self) -> dict[str, float]:
        if self.trainer.sanity_checking:
            self.drop_real_features()
            return {self.metric_name: float("nan")}
        if self._real_updated:
            self._real_done, self._real_updated = True, False
        n_total, bs = int(self.fid_cfg["num_samples"]), int(self.fid_cfg["batch_size"])
        rank, world = self.global_rank, self.trainer.world_size
        labels = torch.arange(rank, n_total, world, device=self.device) % self.num_classes  # class-balanced
        generator = torch.Generator().manual_seed(self.sample_seed + 1_000_003 * rank)  # fixed per evaluation
        grid: list[Tensor] = []
        with self.ema.applied() if self.ema is not None else nullcontext():  # DiT samples from the EMA
            for start in range(0, len(labels), bs):
                with self.trainer.precision_plugin.val_step_context():
                    images = to_uint8(self.generate(labels[start : start + bs], generator))
                self.fid_update(images, real=False)
                if rank == 0 and sum(len(g) for g in grid) < int(self.grid_cfg["size"]):
                    grid.append(images.cpu())
        counted = self.fid.real_features_num_samples.detach().clone().double()
        n_real = int(self.trainer.strategy.reduce(counted, reduce_op="sum"))  # every process's images, each once
        dim = int(self.fid.real_features_sum.numel())
        if n_real < dim:
            warnings.warn(
                f"FID against {n_real} real images with {dim}-dimensional features: fewer images than feature "
                "dimensions leave the covariance singular and the estimate biased; use more validation images",
                stacklevel=2,
            )
        value = float(self.fid.compute())
        self.fid.reset()  # fake features only (reset_real_features=False)
        if rank == 0 and grid:
            self.save_grid(torch.cat(grid)[: int(self.grid_cfg["size"])])
        return {self.metric_name: value, "fid_samples": float(n_total), "fid_real_images": float(n_real)}

    def save_grid(self, images: Tensor) -> Path:
        from torchvision.utils import save_image

        out = Path(self.trainer.default_root_dir) / "samples" / f"epoch{self.current_epoch}_step{self.global_step}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        save_image(images.float() / 255.0, out, nrow=int(self.grid_cfg["nrow"]))
        self.grids.append(out)
        for lg in self.loggers:  # wandb shows the grid next to the FID curve
            if hasattr(lg, "log_image"):
                try:
                    lg.log_image(key="samples", images=[str(out)], step=self.global_step)
                except Exception as e:  # noqa: BLE001 (a logger's image upload must not fail the run)
                    log.warning("could not log the sample grid to %s: %s", type(lg).__name__, e)
        return out
