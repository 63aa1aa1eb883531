"""Methods on quantized bases: bitsandbytes Linear4bit / Linear8bitLt (its CPU backend) and a stand-in int8 linear.

Oracle: the quantized layer's own forward (the untouched bitsandbytes module, called by the test) plus each
method's term written out by hand from its trained tensors. Merging refuses, or dequantizes when asked;
methods that need the float weight (DoRA) and full fine-tuning are refused before anything is wrapped.
"""

from __future__ import annotations

import copy
import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from onelora.peft import PeftError, apply_peft, count_parameters, disable_peft, merge_peft
from onelora.peft.bases import AdaptedQuantized

logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # its CPU backend notes a missing optional kernel
bnb = pytest.importorskip("bitsandbytes")

K, D, H = 24, 16, 12  # in, out and hidden widths of the two-layer stack


class Stack(nn.Module):
    def __init__(self, linear: type = nn.Linear, **kw) -> None:
        super().__init__()
        self.up = linear(K, H, **kw)
        self.down = linear(H, D, bias=False, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x)))


def quantized_stack(kind: str) -> Stack:
    torch.manual_seed(0)
    plain = Stack()
    if kind == "nf4":
        q = Stack(bnb.nn.Linear4bit, compute_dtype=torch.float32, quant_type="nf4")
    else:
        q = Stack(bnb.nn.Linear8bitLt, has_fp16_weights=False)
    q.load_state_dict(plain.state_dict())
    return q.to("cpu")  # quantizes the weights


class Int8Linear(nn.Linear):
    """Stand-in quantized layer: int8 weight and a per-row scale; its forward dequantizes."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias)
        w = self.weight.detach()
        scale = w.abs().amax(1) / 127
        self.weight = nn.Parameter((w / scale[:, None]).round().to(torch.int8), requires_grad=False)
        self.register_buffer("scale", scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.float() * self.scale[:, None], self.bias)


def hand_term(method: str, layer: AdaptedQuantized, x: torch.Tensor) -> torch.Tensor:
    """Each method's addition to the base output, from its tensors (independent of the library's forward)."""
    a = layer.adapter
    if method in ("onelora", "onelora_bias"):
        term = x.sum(-1, keepdim=True) * a.b
    elif method == "lora":
        term = (x @ a.lora_A.T) @ a.lora_B.T * a.scaling
    elif method == "vera":
        term = ((x @ a.vera_A.T) * a.lambda_d) @ a.vera_B.T * a.lambda_b
    else:
        term = torch.zeros(x.shape[:-1] + (layer.out_features,))
    if layer.bias is not None:
        term = term + layer.bias - (0 if layer.frozen_bias is None else layer.frozen_bias)
    return term


def perturb(model: nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)


@pytest.mark.parametrize("method", ["onelora", "lora", "vera", "bitfit", "onelora_bias"])
@pytest.mark.parametrize("kind", ["nf4", "int8"])
def test_methods_on_bitsandbytes_call_its_forward(kind, method):
    base = quantized_stack(kind)
    layers = {"up": base.up, "down": base.down}  # the bitsandbytes modules themselves, kept by the wrappers
    model = apply_peft(base, method, rank=2) if method in ("lora", "vera") else apply_peft(base, method)
    x = torch.randn(3, 5, K)
    with torch.no_grad():
        ref = layers["down"](F.gelu(layers["up"](x)))
    torch.testing.assert_close(model(x), ref, atol=0, rtol=0)  # zero-initialised: the base exactly
    assert all(isinstance(getattr(model, n), AdaptedQuantized) for n in layers)
    assert all(getattr(model, n).base_layer is layers[n] for n in layers)

    perturb(model)
    with torch.no_grad():
        h = layers["up"](x) + hand_term(method, model.up, x)
        expected = layers["down"](F.gelu(h)) + hand_term(method, model.down, F.gelu(h))
    y = model(x)
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)
    y.square().mean().backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None and p.grad.abs().sum() > 0 for _, p in trainable)
    counts = count_parameters(model)
    per_layer = {"onelora": H + D, "lora": 2 * (K + H) + 2 * (H + D), "vera": H + 2 + D + 2, "bitfit": H + D}
    assert counts.peft == per_layer.get(method, 2 * (H + D))


def test_stand_in_int8_linear_generic_forward_and_disable():
    torch.manual_seed(0)
    model = Stack(Int8Linear)
    x = torch.randn(4, K)
    ref = model(x).detach()
    apply_peft(model, "onelora_bias_gamma")
    perturb(model)
    y = model(x)
    h = model.up.base_layer(x) + hand_term("onelora_bias", model.up, x)
    h = F.gelu(h * model.up.gamma)
    expected = (model.down.base_layer(h) + hand_term("onelora_bias", model.down, h)) * model.down.gamma
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)
    with disable_peft(model):
        torch.testing.assert_close(model(x), ref, atol=0, rtol=0)
    torch.testing.assert_close(model(x), y)


@pytest.mark.parametrize("kind", ["nf4", "stand-in"])
def test_merge_refuses_or_dequantizes_when_asked(kind):
    model = quantized_stack("nf4") if kind == "nf4" else Stack(Int8Linear)
    apply_peft(model, "lora", rank=2)
    perturb(model)
    x = torch.randn(6, K)
    y = model(x).detach()
    with pytest.raises(PeftError, match=r"cannot merge into quantized layers \(up: .*dequantize=True"):
        merge_peft(model)
    assert isinstance(model.up, AdaptedQuantized)  # nothing merged half-way
    merge_peft(model, dequantize=True)
    assert type(model.up) is nn.Linear and type(model.down) is nn.Linear
    torch.testing.assert_close(model(x), y, atol=1e-5, rtol=1e-5)


def test_refused_up_front_never_wrapped():
    model = quantized_stack("nf4")
    before = copy.copy(model._modules)
    with pytest.raises(PeftError, match=r"'dora' cannot adapt up \(Linear4bit\): it needs the layer's float weight"):
        apply_peft(model, "dora")
    with pytest.raises(PeftError, match="cannot train a quantized model's integer weights"):
        apply_peft(model, "full")
    emb = nn.Sequential(nn.Embedding(10, K), Stack())
    with pytest.raises(PeftError, match=r"names layers no method can adapt: 0 \(Embedding\); supported: nn.Linear"):
        apply_peft(emb, "onelora", target_modules=["0", "up"])
    with pytest.raises(PeftError, match=r"target_modules='0' matches only layers no method can adapt: 0 \(Embedding\)"):
        apply_peft(emb, "onelora", target_modules="0")
    assert model._modules == before and not hasattr(model, "peft_config") and not hasattr(emb, "peft_config")
    assert not any(isinstance(m, AdaptedQuantized) for m in emb.modules())


def test_qlora_bench_tiny_llama():
    """`make bench`'s 4-bit Llama stack: 1LoRA vs LoRA r=1 on NF4 weights, with exact counts and ratios to LoRA."""
    from onelora.costs.bench import llama_stack, qlora_benchmark, qlora_table

    spec = llama_stack(hidden=32, layers=2, batch=2, seq=16)
    rows = {r["method"]: r for r in qlora_benchmark(spec, repeats=1)}
    # per layer (k -> d): q, k, v, o 32 -> 32 (one head of 32), gate, up 32 -> 86, down 86 -> 32
    shapes = [(32, 32)] * 4 + [(32, 86), (32, 86), (86, 32)]
    assert rows["onelora"]["trainable_params"] == rows["bitfit"]["trainable_params"] == 2 * sum(d for _, d in shapes)
    assert rows["lora"]["trainable_params"] == 2 * sum(k + d for k, d in shapes)
    assert rows["lora"]["step_ratio_lora"] == rows["lora"]["saved_ratio_lora"] == 1.0
    # 1LoRA keeps one scalar per token and layer for backward, LoRA the rank-1 activation and (for A) the input
    assert rows["bitfit"]["saved_bytes"] < rows["onelora"]["saved_bytes"] < rows["lora"]["saved_bytes"]
    assert rows["onelora"]["state_ratio_lora"] < 1
    assert qlora_table(list(rows.values())).count("\n") == 4


@pytest.mark.parametrize("method", ["onelora_bias", "vera"])
def test_save_load_on_a_quantized_base(method, tmp_path):
    from onelora.peft import load_peft, save_peft

    model = apply_peft(quantized_stack("nf4"), method)
    perturb(model)
    x = torch.randn(4, K)
    save_peft(model, tmp_path / "a")
    loaded = load_peft(quantized_stack("nf4"), tmp_path / "a")
    assert isinstance(loaded.up, AdaptedQuantized)
    torch.testing.assert_close(loaded(x), model(x), atol=0, rtol=0)
