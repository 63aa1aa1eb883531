"""DiT's diffusion pieces (`facebookresearch/DiT`, `diffusion/` and `sample_ddp.py`), used by the generation task.

- `VariationalBound`: the `vb` term of DiT's hybrid loss for a learned-range variance (guided-diffusion).
- `sampling_scheduler`: a diffusers scheduler that reproduces DiT's samplers (DDPM with the learned variance and
  DiT's respacing, or DDIM η = 0).
- `classifier_free_guidance`: DiT's `forward_with_cfg`, which guides the first 3 latent channels only ("for exact
  reproducibility", its comment says); `channels="all"` guides every latent channel, as diffusers' DiTPipeline.
- `to_uint8`: DiT's conversion of decoded samples to the uint8 images its FID evaluation reads.
- `ParameterEMA`: DiT's EMA of the weights (decay 0.9999), over the trained parameters only.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError

NOISE_SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 2e-2, "beta_schedule": "linear"}


def to_uint8(images: Tensor) -> Tensor:
    """[-1, 1] images -> uint8 as DiT's sample_ddp.py: clamp(127.5·x + 128, 0, 255), then truncation.

    The +128 (not +127.5) with truncation rounds to the nearest level, and recovers a real image's own uint8
    values from its Normalize(0.5, 0.5) tensor exactly, so real and generated images take the same path.
    """
    return (127.5 * images.float() + 128.0).clamp(0, 255).to(torch.uint8)


# --- DiT's variational-bound term (guided-diffusion, LEARNED_RANGE) --------------------------------
def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _approx_std_normal_cdf(x: Tensor) -> Tensor:
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x: Tensor, means: Tensor, log_scales: Tensor) -> Tensor:
    """Log-likelihood of x under a Gaussian discretised to 256 bins in [-1, 1] (DiT applies it to latents at t = 0)."""
    centered, inv_std = x - means, torch.exp(-log_scales)
    cdf_plus = _approx_std_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = _approx_std_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


class VariationalBound:
    """Per-sample bits of DiT's `vb` term for a learned-range variance; tables in float64 as guided-diffusion."""

    def __init__(self, betas: Tensor) -> None:
        b = betas.double()
        alphas = 1.0 - b
        ac = torch.cumprod(alphas, 0)
        ac_prev = torch.cat([ac.new_ones(1), ac[:-1]])
        post_var = b * (1.0 - ac_prev) / (1.0 - ac)
        self.tables = {
            "sqrt_recip_ac": torch.sqrt(1.0 / ac),
            "sqrt_recipm1_ac": torch.sqrt(1.0 / ac - 1.0),
            "post_logvar": torch.log(torch.cat([post_var[1:2], post_var[1:]])),
            "coef1": b * torch.sqrt(ac_prev) / (1.0 - ac),
            "coef2": (1.0 - ac_prev) * torch.sqrt(alphas) / (1.0 - ac),
            "log_betas": torch.log(b),
        }

    def _at(self, name: str, t: Tensor) -> Tensor:
        table = self.tables[name]
        if table.device != t.device:
            table = self.tables[name] = table.to(t.device)
        return table[t].float().view(-1, 1, 1, 1)

    def __call__(self, eps: Tensor, var_values: Tensor, x0: Tensor, xt: Tensor, t: Tensor) -> Tensor:
        c1, c2 = self._at("coef1", t), self._at("coef2", t)
        true_mean, true_logvar = c1 * x0 + c2 * xt, self._at("post_logvar", t)
        frac = (var_values + 1.0) / 2.0
        model_logvar = frac * self._at("log_betas", t) + (1.0 - frac) * true_logvar
        pred_x0 = self._at("sqrt_recip_ac", t) * xt - self._at("sqrt_recipm1_ac", t) * eps
        model_mean = c1 * pred_x0 + c2 * xt
        kl = normal_kl(true_mean, true_logvar, model_mean, model_logvar).mean(dim=(1, 2, 3)) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_logvar).mean(dim=(1, 2, 3))
        return torch.where(t == 0, nll / math.log(2.0), kl)


# --- sampling ----------------------------------------------------------------------------------------
def sampling_scheduler(name: str, noise_schedule: Mapping[str, Any], learned_sigma: bool) -> Any:
    """DiT's sampler as a diffusers scheduler: `ddpm` (learned-range variance, DiT's respacing) or `ddim` (η = 0)."""
    from diffusers import DDIMScheduler, DDPMScheduler

    common = {**noise_schedule, "prediction_type": "epsilon", "clip_sample": False}
    if name == "ddpm":  # DiT's respacing of 250 of 1000 steps = linspace(0, 999) rounded
        variance = "learned_range" if learned_sigma else "fixed_small"
        return DDPMScheduler(**common, variance_type=variance, timestep_spacing="linspace")
    if name == "ddim":  # η = 0; DiT's "ddimN" respacing = every 1000/N steps from 0
        return DDIMScheduler(**common, set_alpha_to_one=True, timestep_spacing="leading")
    raise ConfigError(f"task.module.sampler.name must be ddpm or ddim, got {name!r}")


def guided_channel_count(channels: int | str, in_channels: int) -> int:
    """The number of leading output channels guidance applies to: an int (DiT: 3), or "all" latent channels."""
    n = in_channels if channels == "all" else channels
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= in_channels:
        raise ConfigError(
            f"task.module.sampler.guidance_channels must be 'all' or an integer in 1..{in_channels} (the model's "
            f"latent channels), got {channels!r}; DiT's forward_with_cfg guides 3, diffusers' DiTPipeline all"
        )
    return n


def classifier_free_guidance(cond: Tensor, uncond: Tensor, scale: float, channels: int) -> Tensor:
    """DiT's `forward_with_cfg` on (conditional, unconditional) outputs: the first `channels` channels guided,
    uncond + scale·(cond − uncond); the other channels (with DiT's 3: the last ε channel and the learned
    variance) are the conditional output's, which DiT keeps when it drops the null-class half of the batch."""
    guided = uncond[:, :channels] + scale * (cond[:, :channels] - uncond[:, :channels])
    return torch.cat([guided, cond[:, channels:]], dim=1)


# --- DiT's EMA of the weights ------------------------------------------------------------------------
class ParameterEMA:
    """An fp32 EMA of a model's trained parameters, updated as DiT's `update_ema` (ema·decay + p·(1 − decay)).

    DiT keeps an EMA of every parameter; the frozen ones never change, so their EMA is themselves and only the
    trained ones are kept here (a PEFT method's EMA costs the size of its adapters, not of the model).
    """

    def __init__(self, model: nn.Module, decay: float, state: Mapping[str, Tensor] | None = None) -> None:
        self.model, self.decay = model, float(decay)
        params = self.trained()
        if state is not None and set(state) != set(params):
            missing, extra = sorted(set(params) - set(state)), sorted(set(state) - set(params))
            raise ConfigError(
                f"the checkpoint's EMA does not hold the trained parameters (missing {missing[:3]}, extra "
                f"{extra[:3]}): the method or its targets changed since it was saved; start a new run directory"
            )
        source = state if state is not None else {n: p.detach() for n, p in params.items()}  # DiT: a copy at start
        self.shadow = {n: source[n].to(p.device, torch.float32).clone() for n, p in params.items()}

    def trained(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self) -> None:
        for n, p in self.trained().items():
            self.shadow[n].mul_(self.decay).add_(p.detach().float(), alpha=1.0 - self.decay)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The model's trained parameters hold the EMA for the duration; their own values come back exactly."""
        params = self.trained()
        saved = {n: p.detach().clone() for n, p in params.items()}
        try:
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(self.shadow[n].to(p.dtype))
            yield
        finally:
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(saved[n])

    def state_dict(self) -> dict[str, Tensor]:
        return {n: t.cpu() for n, t in self.shadow.items()}
