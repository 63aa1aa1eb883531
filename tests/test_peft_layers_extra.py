"""Layer types beyond nn.Linear, and switching the adapters off.

- transformers Conv1D (GPT-2, W stored as (in, out)): every method must act exactly as on the nn.Linear with
  weight Wᵀ. Oracle: a twin GPT-2 whose Conv1D layers are replaced by such nn.Linear layers, given the same
  adapter values. Merging gives Conv1D layers again.
- nn.Conv2d (named in a target list): 1LoRA is ΔW = b 1ᵀ over in_channels × kh × kw, so the oracle is the same
  net with b added by hand to every weight entry of output channel o (stride, padding mode, dilation and groups
  left to PyTorch); LoRA against HF peft's Conv2d LoRA; BitFit by hand. Counts from the layer shapes.
- `disable_peft`: the frozen base exactly, no copy, on again after the block, also after an exception.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from onelora.peft import PeftError, apply_peft, count_parameters, disable_peft, load_peft, merge_peft, save_peft

transformers = pytest.importorskip("transformers")
from transformers.pytorch_utils import Conv1D  # noqa: E402

GPT2_METHODS = ["onelora", "onelora_random", "lora", "dora", "vera", "mora1", "mora6", "bitfit", "difffit"]


def tiny_gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=64, n_positions=16, n_embd=16, n_layer=2, n_head=2, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0,
        bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    return GPT2LMHeadModel(cfg).eval()


def as_linear_twin(model: nn.Module) -> nn.Module:
    """The same model with every Conv1D replaced by the nn.Linear it stands for (weight transposed)."""
    twin = copy.deepcopy(model)
    for name, mod in list(twin.named_modules()):
        if isinstance(mod, Conv1D):
            lin = nn.Linear(mod.nx, mod.nf)
            with torch.no_grad():
                lin.weight.copy_(mod.weight.T)
                lin.bias.copy_(mod.bias)
            parent, _, child = name.rpartition(".")
            setattr(twin.get_submodule(parent), child, lin)
    return twin


def perturb(model: nn.Module, seed: int = 1, scale: float = 0.1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)


@pytest.fixture(scope="module")
def gpt2():
    model = tiny_gpt2()
    return model, as_linear_twin(model), torch.randint(0, 64, (2, 9))


@pytest.mark.parametrize("method", GPT2_METHODS)
def test_conv1d_is_adapted_exactly_like_linear(gpt2, method, tmp_path):
    base, twin_base, ids = gpt2
    ref = base(ids).logits
    torch.testing.assert_close(twin_base(ids).logits, ref, atol=1e-6, rtol=1e-5)
    model, twin = apply_peft(copy.deepcopy(base), method), apply_peft(copy.deepcopy(twin_base), method)
    conv1d = [n for n, m in base.named_modules() if isinstance(m, Conv1D)]
    assert model.peft_config["adapted_layers"] == len(conv1d) == 8  # all-linear takes Conv1D (lm_head excluded)
    torch.testing.assert_close(model(ids).logits, ref, atol=1e-6, rtol=1e-5)  # step 0: the base model
    ours, theirs = count_parameters(model), count_parameters(twin)
    assert (ours.peft, ours.trainable, ours.groups) == (theirs.peft, theirs.trainable, theirs.groups)
    if method in ("onelora", "bitfit"):  # d per layer: c_attn 48, attn.c_proj 16, c_fc 64, mlp.c_proj 16; 2 blocks
        assert ours.peft == sum(base.get_submodule(n).nf for n in conv1d) == 2 * (48 + 16 + 64 + 16)
    if method == "lora":  # k + d per layer
        assert ours.peft == 2 * ((16 + 48) + (16 + 16) + (16 + 64) + (64 + 16))

    perturb(model)
    twin_params = dict(twin.named_parameters())
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                twin_params[name].copy_(p)
    y = model(ids).logits
    assert (y - ref).abs().max() > 1e-3
    torch.testing.assert_close(y, twin(ids).logits, atol=1e-5, rtol=1e-5)

    save_peft(model, tmp_path / "a")
    loaded = load_peft(copy.deepcopy(base), tmp_path / "a")
    torch.testing.assert_close(loaded(ids).logits, y, atol=0, rtol=0)
    merged = merge_peft(model)
    assert all(type(merged.get_submodule(n)) is Conv1D for n in conv1d)
    torch.testing.assert_close(merged(ids).logits, y, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------- nn.Conv2d
class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 6, 3, stride=2, padding=1, padding_mode="reflect", bias=False)
        self.conv3 = nn.Conv2d(6, 4, 3, dilation=2, groups=2)
        self.head = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv3(torch.relu(self.conv2(torch.relu(self.conv1(x)))))
        return self.head(h.mean((-2, -1)))


CONVS = ["conv1", "conv2", "conv3"]


def conv_net() -> nn.Module:
    torch.manual_seed(0)
    return ConvNet().eval()


def by_hand(base: nn.Module, model: nn.Module, method: str) -> nn.Module:
    """The base net with each method's update written into its weights by hand."""
    net = copy.deepcopy(base)
    with torch.no_grad():
        for name in CONVS:
            layer, conv = model.get_submodule(name), net.get_submodule(name)
            if method == "onelora":  # b[o] added to every entry of row o (all in-channels of its group, kh, kw)
                conv.weight += layer.adapter.b[:, None, None, None]
            elif method == "lora" and getattr(layer, "adapter", None) is not None:
                a, b = layer.adapter.lora_A, layer.adapter.lora_B
                conv.weight += torch.einsum("or,rikl->oikl", b[:, :, 0, 0], a) * layer.adapter.scaling
            elif method == "bitfit":
                conv.bias = nn.Parameter(layer.bias.detach().clone())
    return net


@pytest.mark.parametrize("method", ["onelora", "lora", "bitfit"])
def test_conv2d_update_merge_save_count(method, tmp_path):
    base = conv_net()
    x = torch.randn(2, 3, 9, 9)
    ref = base(x)
    targets = CONVS[:2] if method == "lora" else CONVS  # LoRA on a grouped conv is refused (below)
    model = (
        apply_peft(copy.deepcopy(base), method, target_modules=targets, rank=2)
        if method == "lora"
        else (apply_peft(copy.deepcopy(base), method, target_modules=targets))
    )
    torch.testing.assert_close(model(x), ref, atol=0, rtol=0)
    expected = {  # per layer: 1LoRA out, LoRA r(in·kh·kw + out), BitFit out (zero biases added where none)
        "onelora": 8 + 6 + 4,
        "lora": 2 * (3 * 9 + 8) + 2 * (8 * 9 + 6),
        "bitfit": 8 + 6 + 4,
    }[method]
    assert count_parameters(model).peft == expected
    perturb(model)
    y = model(x)
    assert (y - ref).abs().max() > 1e-3
    torch.testing.assert_close(y, by_hand(base, model, method)(x), atol=1e-5, rtol=1e-5)
    y.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)

    save_peft(model, tmp_path / "a")
    torch.testing.assert_close(load_peft(copy.deepcopy(base), tmp_path / "a")(x), y, atol=0, rtol=0)
    merged = merge_peft(model)
    assert all(type(merged.get_submodule(n)) is nn.Conv2d for n in targets)
    torch.testing.assert_close(merged(x), y, atol=1e-5, rtol=1e-5)


def test_conv2d_lora_matches_peft():
    from peft import LoraConfig, get_peft_model

    base = conv_net()
    ours = apply_peft(copy.deepcopy(base), "lora", target_modules=["conv1"], rank=2, alpha=3.0)
    theirs = get_peft_model(copy.deepcopy(base), LoraConfig(r=2, lora_alpha=3.0, target_modules=["conv1"]))
    layer = theirs.base_model.model.conv1
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    assert a.shape == ours.conv1.adapter.lora_A.shape and b.shape == ours.conv1.adapter.lora_B.shape
    with torch.no_grad():
        b.copy_(torch.randn(b.shape) * 0.3)
        ours.conv1.adapter.lora_A.copy_(a)
        ours.conv1.adapter.lora_B.copy_(b)
    x = torch.randn(2, 3, 9, 9)
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-6, rtol=1e-5)


def test_conv2d_refusals_name_the_layer():
    with pytest.raises(PeftError, match=r"'vera' cannot adapt conv1 \(Conv2d\): on nn.Conv2d only onelora, lora"):
        apply_peft(conv_net(), "vera", target_modules=["conv1"])
    with pytest.raises(PeftError, match=r"'lora' cannot adapt conv3 .*grouped convolution \(groups=2\)"):
        apply_peft(conv_net(), "lora", target_modules=CONVS)
    with pytest.raises(PeftError, match=r"'difffit' cannot adapt conv1"):
        apply_peft(conv_net(), "difffit", target_modules=["conv1"])
    with pytest.raises(PeftError, match=r"its nn.Conv2d layers \(conv1, conv2, conv3\) are adapted when named"):
        apply_peft(conv_net(), "onelora")  # all-linear never takes a convolution


# ------------------------------------------------------------------------------- disable_peft
@pytest.mark.parametrize("method", ["onelora_bias_gamma_norms", "lora", "dora"])
def test_disable_peft_runs_the_frozen_base_and_reenables(gpt2, method):
    base, _, ids = gpt2
    ref = base(ids).logits
    model = apply_peft(copy.deepcopy(base), method)
    perturb(model)
    adapted = model(ids).logits
    params = {n: p for n, p in model.named_parameters()}
    with disable_peft(model) as m:
        assert m is model
        torch.testing.assert_close(model(ids).logits, ref, atol=0, rtol=0)
    assert {n: p for n, p in model.named_parameters()} == params  # the same tensors: nothing copied or replaced
    torch.testing.assert_close(model(ids).logits, adapted, atol=0, rtol=0)
    with pytest.raises(RuntimeError, match="inside"):
        with disable_peft(model):
            raise RuntimeError("inside")
    torch.testing.assert_close(model(ids).logits, adapted, atol=0, rtol=0)
    with disable_peft(model):
        with disable_peft(model):  # a helper that takes reference outputs, called inside an outer block
            pass
        torch.testing.assert_close(model(ids).logits, ref, atol=0, rtol=0)  # the outer block still holds
    torch.testing.assert_close(model(ids).logits, adapted, atol=0, rtol=0)
    with pytest.raises(PeftError, match="no adapter to switch off"):
        with disable_peft(apply_peft(copy.deepcopy(base), "full")):
            pass


@pytest.mark.filterwarnings("error::UserWarning")  # peft's note on GPT-2's Conv1D stays off the screen
def test_disable_peft_switches_off_hf_peft_tuners_too(gpt2):
    """peft=hf_* methods keep peft's own layers in the model: disable_peft uses their switch."""
    base, _, ids = gpt2
    ref = base(ids).logits
    model = apply_peft(copy.deepcopy(base), "hf_lora_r1", config_class="LoraConfig", config={"r": 1})
    perturb(model)
    adapted = model(ids).logits
    assert (adapted - ref).abs().max() > 1e-3
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    with disable_peft(model):
        with disable_peft(model):
            pass
        torch.testing.assert_close(model(ids).logits, ref, atol=0, rtol=0)  # nested: the outer block holds
    torch.testing.assert_close(model(ids).logits, adapted, atol=0, rtol=0)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable
