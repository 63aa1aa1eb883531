"""The dry run's memory model: CUDA's autocast lists on fake tensors, the GPU's attention kernel and dropout mask,
the data's input size, the strategies' extra terms (FSDP gathered units, DeepSpeed buckets and bf16 module), the
DiT's VAE, and activation checkpointing of diffusers and timm blocks. Expected values are derived by hand."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import hydra_cfg
from torch import nn

from onelora.costs.memory import depth_input_hw, estimate_from_config, format_memory_lines, saved_activations
from onelora.costs.memory_trace import _fake_mode, device_autocast
from onelora.run.build import build_peft_model


# --- autocast: CUDA's op lists (aten/src/ATen/autocast_mode.h), run by torch itself on fake CUDA tensors ---------
def test_cuda_autocast_policies_are_torchs_cuda_lists_not_cpus() -> None:
    # From torch's AT_FORALL_* lists for CUDA: linear/bmm lower precision; exp, log, pow, rsqrt, layer_norm,
    # group_norm, upsample_bilinear2d, mse_loss fp32; softmax and sum fp32 unless a dtype is given
    # (fp32_set_opt_dtype); addcmul promote (widest input). gelu is on no list (runs in its input's dtype).
    expected = {"linear": "bfloat16", "bmm": "bfloat16", "exp": "float32", "log": "float32", "pow": "float32",
                "rsqrt": "float32", "layer_norm": "float32", "group_norm": "float32", "interpolate": "float32",
                "mse_loss": "float32", "softmax": "float32", "sum": "float32", "addcmul": "float32",
                "gelu": "bfloat16"}  # fmt: skip
    registered = set(torch._C._dispatch_get_registrations_for_dispatch_key("AutocastCUDA"))
    for op in ("aten::linear", "aten::exp", "aten::layer_norm", "aten::softmax.int", "aten::addcmul", "aten::sum"):
        assert op in registered
    dtypes = {}
    for device in ("cuda", "cpu"):
        mode = _fake_mode()
        with mode:
            x, w = torch.empty(4, 8, device=device), torch.empty(8, 8, device=device)
            with device_autocast(device, torch.bfloat16):
                y = F.linear(x, w)
                dtypes[device] = {
                    "linear": y, "bmm": torch.bmm(x[None], w[None]), "exp": y.exp(), "log": y.log(), "pow": y**2,
                    "rsqrt": y.rsqrt(), "layer_norm": F.layer_norm(y, (8,)), "group_norm": F.group_norm(y[None], 2),
                    "interpolate": F.interpolate(y[None, None], scale_factor=2, mode="bilinear"),
                    "mse_loss": F.mse_loss(y, y), "softmax": y.softmax(-1), "sum": y.sum(),
                    "addcmul": torch.addcmul(y, x, y), "gelu": F.gelu(y),
                }  # fmt: skip
        dtypes[device] = {k: str(v.dtype).removeprefix("torch.") for k, v in dtypes[device].items()}
    assert dtypes["cuda"] == expected
    # CPU autocast's lists differ: these stay in bf16 there (the trace is CUDA's, not the host's)
    assert all(dtypes["cpu"][k] == "bfloat16" for k in ("exp", "layer_norm", "softmax", "interpolate"))


class Block(nn.Module):
    def __init__(self, d: int = 64, heads: int = 2, p: float = 0.0) -> None:
        super().__init__()
        self.qkv, self.heads, self.p = nn.Linear(d, 3 * d), heads, p

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return F.dropout(out, self.p, self.training)


def test_gpu_attention_kernel_and_dropout_mask() -> None:
    b, n, d, h = 2, 128, 64, 2
    block = Block(d, h).to("meta")
    x = torch.empty(b, n, d, device="meta", requires_grad=True)
    flash = saved_activations(block, {"x": x}, "bfloat16", layer_classes=(), device_type="cuda")["total"]
    # linear saves x and the weight in bf16 (autocast's cached cast of the fp32 weight), its output qkv (q, k, v
    # are views of it); flash attention its output (bf16), the log-sum-exp (fp32, b×h×n) and the philox seed (2
    # uint64) and offset (1 uint64); no n×n matrix
    x16, w16, qkv, out, lse = b * n * d * 2, 3 * d * d * 2, 3 * b * n * d * 2, b * n * d * 2, b * h * n * 4
    assert flash == x16 + w16 + qkv + out + lse + 3 * 8
    dropped = saved_activations(Block(d, h, p=0.1).to("meta"), {"x": x}, "bfloat16", layer_classes=(),
                                device_type="cuda")["total"]  # fmt: skip
    assert dropped - flash == b * n * d * 1  # CUDA's dropout keeps a bool (1-byte) mask
    fp32 = saved_activations(block, {"x": x}, None, layer_classes=(), device_type="cuda")["total"]
    # fp32: no flash kernel on CUDA; memory-efficient attention saves the same tensors in fp32 (x needs no cast)
    assert fp32 == 2 * (x16 + qkv + out) + lse + 2 * 8


# --- one input size for the data and the estimate --------------------------------------------------------------
def test_depth_input_size_is_the_datas(tmp_path: Path) -> None:
    from onelora.data.depth import DepthSampleTransform

    with hydra_cfg(tmp_path, "experiment=mde_nyu2kitti", "peft=onelora") as cfg:
        hw = depth_input_hw(cfg)
        data = cfg.data.module
        transform = DepthSampleTransform(train=True, input_size=list(data.input_size), keep_aspect=data.keep_aspect,
                                         resize_method=data.resize_method, rotate_degrees=0, hflip_p=0,
                                         color_aug_p=0)  # fmt: skip
    image, depth, _ = transform(torch.zeros(3, 352, 1216, dtype=torch.uint8), torch.ones(352, 1216))
    # Depth Anything's get_config(..., "kitti") img_size [392, 518] (the KB-cropped frame is 352x1216)
    assert hw == (392, 518) == tuple(image.shape[-2:])


# --- the strategies' terms, the VAE, checkpointing ---------------------------------------------------------------
def _estimate(tmp_path: Path, *overrides: str) -> dict:
    with hydra_cfg(tmp_path, *overrides, "dry_run=true") as cfg:
        model, _ = build_peft_model(cfg, meta=True)
        return estimate_from_config(model, cfg)


def test_deepspeed_buckets_and_bf16_module(tmp_path: Path) -> None:
    est = _estimate(tmp_path, "experiment=math_llama2_13b", "model=llama_tiny", "peft=onelora")
    n, world = est["trainable_params"], 64
    assert est["world_size"] == world and est["buckets"] == 2 * 200_000_000 * 2  # two bf16 buckets of 2e8
    # DeepSpeed casts the module to bf16: bf16 gradients, fp32 moments and master copies, ZeRO-2 sharded
    assert est["gradients"] == 2 * n // world and est["optimizer"] == 8 * n // world + 4 * n // world
    assert "DeepSpeed buckets 762.94 MiB" in format_memory_lines(est)[1]


def test_fsdp_counts_the_gathered_units(tmp_path: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    est = _estimate(tmp_path, "experiment=math_llama2_7b", "model=llama_tiny", "trainer=fsdp", "peft=onelora")
    with hydra_cfg(tmp_path, "model=llama_tiny") as cfg:
        llama = LlamaForCausalLM(LlamaConfig(**cfg.model.arch))
    h, v = llama.config.hidden_size, llama.config.vocab_size
    root = (2 * v * h + h) * 2  # embeddings, LM head, final norm in bf16
    layer = sum(p.numel() for p in llama.model.layers[0].parameters()) * 2  # frozen layer unit (bf16)
    full = root + 2 * layer
    assert est["world_size"] == 16 and est["gathered"] == full - full // 16
    assert est["gradient_checkpointing"] == 1


def test_fsdp2_estimate_is_fsdp_s(tmp_path: Path) -> None:
    """FSDP2 shards the decoder layers (their adapters inside) and the root, and gathers them as FSDP v1 does."""
    args = ("experiment=math_llama2_7b", "model=llama_tiny", "peft=lora")
    fsdp2 = _estimate(tmp_path, *args, "trainer=fsdp2")
    assert fsdp2 == _estimate(tmp_path, *args, "trainer=fsdp", "trainer.strategy.wrap_adapters=false")
    assert fsdp2["gathered"] > _estimate(tmp_path, *args, "trainer=fsdp")["gathered"]  # two layers' adapters more


def test_dit_vae_and_diffusers_checkpointing(tmp_path: Path) -> None:
    from diffusers import AutoencoderKL

    ckpt = _estimate(tmp_path, "experiment=gen_dit_food101", "model=dit_tiny", "peft=onelora",
                     "++model.gradient_checkpointing=true")  # fmt: skip
    with hydra_cfg(tmp_path, "model=dit_tiny") as cfg:
        vae = AutoencoderKL(**cfg.model.vae.arch)
    assert ckpt["frozen_models"] == sum(t.numel() * 4 for t in [*vae.parameters(), *vae.buffers()]) > 0
    assert ckpt["gradient_checkpointing"] == 1 and ckpt["activations"] < ckpt["activations_no_checkpointing"]
    assert "activation checkpointing on" in format_memory_lines(ckpt)[0]


def test_timm_checkpointing_wraps_its_blocks(tmp_path: Path) -> None:
    ckpt = _estimate(tmp_path, "experiment=cls_cifar10", "model=vit_tiny_timm", "peft=onelora",
                     "++model.gradient_checkpointing=true")  # fmt: skip
    assert ckpt["gradient_checkpointing"] == 1 and ckpt["activations"] < ckpt["activations_no_checkpointing"]


@pytest.mark.parametrize("method", ["onelora", "lora"])
def test_meta_trace_equals_a_real_cpu_trace(method: str, tmp_path: Path) -> None:
    """The same forward on real CPU tensors and on fake CPU tensors saves the same bytes (bf16 autocast)."""
    with hydra_cfg(tmp_path, "experiment=math_llama2_7b", "model=llama_tiny", f"peft={method}") as cfg:
        model, _ = build_peft_model(cfg)
    ids = torch.randint(0, 128, (2, 32))
    mask = torch.ones_like(ids)
    mask[0, -1] = 0
    inputs = {"input_ids": ids, "attention_mask": mask, "labels": ids, "use_cache": False}
    real = saved_activations(model, inputs, "bfloat16")["total"]
    meta = {k: v.to("meta") if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    fake = saved_activations(model.to("meta"), meta, "bfloat16", device_type="cpu")["total"]
    assert real > 0 and fake == real


def test_largest_fitting_batch_is_linear_in_the_micro_batch(tmp_path: Path) -> None:
    from onelora.costs.memory import largest_fitting_batch

    with hydra_cfg(tmp_path, "experiment=math_llama2_13b", "model=llama_tiny", "peft=lora", "dry_run=true") as cfg:
        model, _ = build_peft_model(cfg, meta=True)
        fit = largest_fitting_batch(model, cfg, budget_bytes=0)
        budget = fit["fixed"] + 3 * fit["per_batch"] + 1024
        three = cfg.copy()
        three.data.module.batch_size = 3
        # a line, up to a few bytes (kernels' scalars and padding)
        assert abs(estimate_from_config(model, three)["total"] - fit["fixed"] - 3 * fit["per_batch"]) <= 64
        fit = largest_fitting_batch(model, cfg, budget_bytes=budget)
    assert fit["max_batch"] == 3 and fit["max_tokens"] == 3 * cfg.data.module.max_length


def test_bench_depth_stack_uses_the_datas_input_size() -> None:
    from onelora.costs.bench import depth_stack

    spec = depth_stack("kitti", hidden=32, layers=1, batch=1)
    assert spec.inputs(torch.device("cpu"), torch.float32)["pixel_values"].shape[-2:] == (392, 518)


# Depth Anything metric_depth's get_config("zoedepth", "train", <dataset>)["img_size"], run on its own code (LiheYoung/
# Depth-Anything @ 1d03336): [392, 518] for "kitti" and "nyu" alike; [384, 768] only with config_version="kitti".
OFFICIAL_IMG_SIZE = {"kitti": (392, 518), "nyu": (392, 518)}


@pytest.mark.parametrize("experiment", ["mde_source_kitti", "mde_nyu2kitti", "mde_source_nyu", "mde_kitti2nyu"])
def test_mde_input_size_is_depth_anythings_get_config(tmp_path: Path, experiment: str) -> None:
    with hydra_cfg(tmp_path, f"experiment={experiment}") as cfg:
        assert depth_input_hw(cfg) == OFFICIAL_IMG_SIZE[cfg.data.name]
    with hydra_cfg(tmp_path, f"experiment={experiment}", "data.module.input_size=[384,768]") as cfg:
        if cfg.data.name == "kitti":  # ZoeDepth's KITTI model config, the documented option
            assert depth_input_hw(cfg) == (378, 770)


def test_nyu_to_kitti_needs_the_memory_of_kitti_to_nyu(tmp_path: Path) -> None:
    """The paper's Tables S2 and S3 give every method the same memory in both directions; at ZoeDepth's KITTI
    378x770 the estimate was 41% higher for NYU->KITTI."""
    totals = {}
    for experiment in ("mde_kitti2nyu", "mde_nyu2kitti"):
        est = _estimate(tmp_path, f"experiment={experiment}", "peft=onelora")
        totals[experiment] = est["total"]
    assert abs(totals["mde_nyu2kitti"] / totals["mde_kitti2nyu"] - 1) < 0.03
