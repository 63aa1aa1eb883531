"""Every method on tiny transformers models (ViT classifier, LLaMA causal LM), and the API's errors.

Oracles: the untouched base model (zero-init methods change nothing at step 0); the adapted
model itself (merging and save/load must reproduce it); the model's own module structure
(which parameters each method should train, and Table 1's per-layer counts); an fp64 copy
for bf16 training.
"""

from __future__ import annotations

import copy
import re

import pytest
import torch
from torch import nn

from onelora.peft import (
    AdaptedLinear,
    Adapter,
    PeftError,
    apply_peft,
    available_methods,
    count_parameters,
    disable_peft,
    load_peft,
    merge_peft,
    save_peft,
    validate_peft,
)
from onelora.peft.mora import mora_rank

transformers = pytest.importorskip("transformers")

COMPOSITES = ["onelora_bias_gamma_norms", "onelora_norms", "onelora_bias", "lora_gamma", "mora6_norms", "vera_bias"]
METHODS = available_methods() + COMPOSITES
# every method but `full` must leave the model exactly unchanged before training
ADAPTER_PARAMS = {  # trainable parameter names inside `.adapter`, per adapter method
    "onelora": {"b"},
    "onelora_random": {"b"},
    "lora": {"lora_A", "lora_B"},
    "lora_qkv": {"lora_A", "lora_B"},
    "dora": {"lora_A", "lora_B", "magnitude"},
    "vera": {"lambda_b", "lambda_d"},
    "mora1": {"M"},
    "mora6": {"M"},
}
EXTRA_NAMES = {"bias", "gamma", "norms"}
QKV = ("q_proj", "k_proj", "v_proj", "qkv")


def parse(method: str) -> tuple[str | None, set[str]]:
    """Independent reading of a method name: (adapter method or None, extras)."""
    aliases = {"bitfit": {"bias"}, "difffit": {"bias", "gamma", "norms"}}
    if method in aliases:
        return None, aliases[method]
    if method in ("bias", "gamma", "norms", "head", "full"):
        return None, {method} & EXTRA_NAMES
    for name in sorted(ADAPTER_PARAMS, key=len, reverse=True):
        if method == name or (method.startswith(name + "_") and set(method[len(name) + 1 :].split("_")) <= EXTRA_NAMES):
            return name, set(method[len(name) + 1 :].split("_")) - {""}
    raise AssertionError(f"test does not know {method}")


# ----------------------------------------------------------------------------------- tiny models


def tiny_vit() -> nn.Module:
    from transformers import ViTConfig, ViTForImageClassification

    cfg = ViTConfig(
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=24,
        image_size=16,
        patch_size=8,
        num_labels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(0)
    return ViTForImageClassification(cfg).eval()


def tiny_llama(hidden: int = 16, layers: int = 2) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=hidden,
        intermediate_size=24,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=32,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


MODELS = {
    "vit": (tiny_vit, "classifier", lambda: {"pixel_values": torch.randn(2, 3, 16, 16)}),
    "llama": (tiny_llama, "lm_head", lambda: {"input_ids": torch.randint(0, 64, (2, 7))}),
}


@pytest.fixture(scope="module")
def peft_base_models():
    """One base model and one fixed input per architecture (tests deep-copy them)."""
    torch.manual_seed(123)
    return {name: (build(), head, make_input()) for name, (build, head, make_input) in MODELS.items()}


def logits(model: nn.Module, inputs: dict) -> torch.Tensor:
    return model(**inputs).logits


def adapted_names(base: nn.Module, head: str, method: str) -> list[str]:
    """The Linear layers a method should wrap: all but the heads (or only q, k, v for lora_qkv)."""
    names = [
        n for n, m in base.named_modules() if isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] not in (head, "lm_head")
    ]
    return [n for n in names if n.endswith(QKV)] if method.startswith("lora_qkv") else names


def expected_trainable(base: nn.Module, head: str, method: str) -> set[str]:
    """Names of the parameters that must train, from the base model's structure alone."""
    if method == "full":
        return {n for n, _ in base.named_parameters()}
    adapter, extras = parse(method)
    out = {n for n, _ in base.named_parameters() if n.split(".")[0] == head}
    wrapped = adapted_names(base, head, method) if adapter or extras & {"bias", "gamma"} else []
    for name in wrapped:
        if adapter:
            out |= {f"{name}.adapter.{p}" for p in ADAPTER_PARAMS[adapter]}
        if "bias" in extras:
            out.add(f"{name}.bias")
        if "gamma" in extras:
            out.add(f"{name}.gamma")
    if "norms" in extras:
        for name, mod in base.named_modules():
            if "Norm" in type(mod).__name__ and name.split(".")[0] != head:
                out |= {f"{name}.{p}" for p, _ in mod.named_parameters(recurse=False)}
    return out


def perturb_trainables(model: nn.Module, seed: int = 1, scale: float = 0.1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)


def adapted(peft_base_models, arch: str, method: str) -> tuple[nn.Module, nn.Module, str, dict]:
    base, head, inputs = peft_base_models[arch]
    model = apply_peft(copy.deepcopy(base), method, head=head)
    return base, model, head, inputs


# ----------------------------------------------------------------------------- every method


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", list(MODELS))
def test_step0_output_unchanged(peft_base_models, arch, method):
    """Oracle: the base model. Zero-init methods (and head/full, trivially) leave outputs exactly equal."""
    base, model, head, inputs = adapted(peft_base_models, arch, method)
    with torch.no_grad():
        assert torch.equal(logits(model, inputs), logits(base, inputs))
    wrapped = sorted(n for n, m in model.named_modules() if isinstance(m, AdaptedLinear))
    adapter, extras = parse(method)
    expected = sorted(adapted_names(base, head, method)) if adapter or extras & {"bias", "gamma"} else []
    assert wrapped == expected
    assert model.peft_config["adapted_layers"] == len(expected)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", list(MODELS))
def test_merge_gives_plain_linear_same_outputs(peft_base_models, arch, method):
    """Oracle: the adapted model after a random perturbation of its trainables; merged = plain nn.Linear."""
    base, model, head, inputs = adapted(peft_base_models, arch, method)
    perturb_trainables(model)
    with torch.no_grad():
        y = logits(model, inputs)
        if method != "head":
            assert not torch.allclose(y, logits(base, inputs), atol=1e-4)  # the perturbation matters
        merged = merge_peft(copy.deepcopy(model))
        assert not any(isinstance(m, AdaptedLinear) for m in merged.modules())
        linear_types = {type(m) for m in merged.modules() if isinstance(m, nn.Linear)}
        assert linear_types == {nn.Linear}
        assert not hasattr(merged, "peft_config")
        torch.testing.assert_close(logits(merged, inputs), y, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", list(MODELS))
def test_save_load_round_trip(peft_base_models, arch, method, tmp_path):
    """Oracle: the trained (perturbed) model; loading onto a fresh base copy reproduces it exactly."""
    base, model, head, inputs = adapted(peft_base_models, arch, method)
    perturb_trainables(model)
    save_peft(model, tmp_path)
    fresh = load_peft(copy.deepcopy(base), tmp_path)
    assert fresh.peft_config["method"] == method
    with torch.no_grad():
        assert torch.equal(logits(fresh, inputs), logits(model, inputs))
    assert {n for n, p in fresh.named_parameters() if p.requires_grad} == expected_trainable(base, head, method)


@pytest.mark.parametrize("method", ["onelora", "lora", "dora", "vera", "mora6", "bitfit", "difffit"])
def test_load_onto_other_shape_names_key(peft_base_models, method, tmp_path):
    """Oracle: the two models' state dicts; the error names a key whose shapes differ."""
    _, model, _, _ = adapted(peft_base_models, "llama", method)
    save_peft(model, tmp_path)
    other = tiny_llama(hidden=24)
    ours = apply_peft(copy.deepcopy(other), method, head="lm_head").state_dict()
    saved = model.state_dict()
    mismatching = {k for k in ours if k in saved and saved[k].shape != ours[k].shape}
    with pytest.raises(PeftError) as err:
        load_peft(other, tmp_path)
    named = re.findall(r"'([^']+)'", str(err.value))
    assert any(k in mismatching for k in named), str(err.value)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", list(MODELS))
def test_gradients_reach_exactly_the_intended_params(peft_base_models, arch, method):
    """Oracle: the model structure (`expected_trainable`); frozen parameters get grad None."""
    base, model, head, inputs = adapted(peft_base_models, arch, method)
    perturb_trainables(model)  # so that no trainable has an identically-zero gradient (LoRA's A, VeRA's λ_d)
    logits(model, inputs).square().mean().backward()
    expected = expected_trainable(base, head, method)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == expected
    assert {n for n, p in model.named_parameters() if p.grad is not None} == expected
    for n, p in model.named_parameters():
        if p.grad is not None and n in expected and method != "full":
            assert p.grad.abs().sum() > 0, n
    trained = dict(model.named_parameters())
    assert count_parameters(model).trainable == sum(trained[n].numel() for n in expected)


def test_bitfit_adds_zero_biases_to_llama(peft_base_models):
    """Oracle: LLaMA's Linear layers have no bias; BitFit adds trainable zero fp32 biases."""
    base, model, _, _ = adapted(peft_base_models, "llama", "bitfit")
    names = adapted_names(base, "lm_head", "bitfit")
    assert all(base.get_submodule(n).bias is None for n in names)
    for n in names:
        bias = model.get_submodule(n).bias
        assert bias.requires_grad and bias.dtype == torch.float32 and torch.count_nonzero(bias) == 0


@pytest.mark.parametrize("method", ["onelora", "bitfit", "gamma", "vera", "lora", "dora", "mora1", "mora6"])
def test_table1_counts_on_llama(peft_base_models, method):
    """Oracle: the paper's Table 1 per-layer formulas (d, d, d, d+1, k+d, k+2d, r̂²), summed by hand."""
    base, model, head, _ = adapted(peft_base_models, "llama", method)
    shapes = [(m.in_features, m.out_features) for m in map(base.get_submodule, adapted_names(base, head, method))]
    per_layer = {
        "onelora": lambda k, d: d,
        "bitfit": lambda k, d: d,
        "gamma": lambda k, d: d,
        "vera": lambda k, d: d + 1,
        "lora": lambda k, d: k + d,
        "dora": lambda k, d: k + 2 * d,
        "mora1": lambda k, d: mora_rank(k, d, 1, 1, "paper") ** 2,
        "mora6": lambda k, d: mora_rank(k, d, 1, 6, "paper") ** 2,
    }[method]
    count = count_parameters(model)
    assert count.peft == sum(per_layer(k, d) for k, d in shapes)
    assert count.head == base.lm_head.weight.numel()


# ---------------------------------------------------------------------------------------- API


def test_unknown_method_lists_valid_names(peft_base_models):
    with pytest.raises(PeftError) as err:
        apply_peft(copy.deepcopy(peft_base_models["vit"][0]), "onelora2")
    msg = str(err.value)
    assert "'onelora2'" in msg and all(name in msg for name in available_methods())


def test_bad_composite_is_unknown(peft_base_models):
    for name in ("onelora_bias_bias", "full_bias", "onelora_foo"):
        with pytest.raises(PeftError, match="unknown peft method"):
            apply_peft(copy.deepcopy(peft_base_models["vit"][0]), name)


def test_unknown_option_names_valid_options(peft_base_models):
    base = peft_base_models["vit"][0]
    with pytest.raises(PeftError, match=r"no option rank; valid: none"):
        apply_peft(copy.deepcopy(base), "bitfit", rank=2)
    with pytest.raises(PeftError) as err:
        apply_peft(copy.deepcopy(base), "lora", rnak=2)
    assert "rnak" in str(err.value) and all(o in str(err.value) for o in ("alpha", "dropout", "rank"))


def test_target_matching_nothing_names_linear_layers(peft_base_models):
    model = copy.deepcopy(peft_base_models["llama"][0])
    with pytest.raises(PeftError) as err:
        apply_peft(model, "onelora", target_modules=["query_proj"])
    msg = str(err.value)
    assert "query_proj" in msg
    assert all(n in msg for n in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"))
    assert not getattr(model, "peft_config", None)


def test_apply_twice_is_an_error(peft_base_models):
    model = apply_peft(copy.deepcopy(peft_base_models["vit"][0]), "onelora")
    with pytest.raises(PeftError, match="already"):
        apply_peft(model, "lora")


BAD_OPTIONS = [  # (method, arguments, what the one line must say)
    ("lora", {"rank": "abc"}, r"option rank='abc' is not allowed; rank must be an integer >= 1"),
    ("lora", {"rank": 0}, r"option rank=0 is not allowed; rank must be an integer >= 1"),
    ("lora", {"dropout": 2.0}, r"option dropout=2.0 is not allowed; dropout must be a probability in \[0, 1\)"),
    ("lora", {"alpha": float("nan")}, r"option alpha=nan is not allowed; alpha must be a number"),
    ("vera", {"d_initial": "0.1"}, r"option d_initial='0.1' is not allowed; d_initial must be a number"),
    ("mora1", {"rank": -1, "rank_rule": "official"}, r"rank=-1 with rank_rule=official is not allowed; .*rank >= 1"),
    ("mora6", {"rank_rule": "paperr"}, r"rank_rule='paperr' is not allowed; rank_rule must be 'paper' or 'official'"),
    ("onelora", {"target_modules": "("}, r"target_modules='\(' is not a valid regular expression \(missing \)"),
    ("onelora", {"exclude_modules": "[a-"}, r"exclude_modules='\[a-' is not a valid regular expression"),
    ("onelora", {"head": [3]}, r"head must be a regex string or a list of module names; 3 is not a name"),
    ("onelora", {"dtype": "bfloat16"}, r"dtype='bfloat16' is not allowed; dtype must be a floating torch.dtype"),
    ("onelora", {"dtype": torch.int8}, r"dtype=torch.int8 is not allowed; dtype must be a floating torch.dtype"),
]


@pytest.mark.parametrize("method,kwargs,message", BAD_OPTIONS, ids=[f"{m}-{next(iter(k))}" for m, k, _ in BAD_OPTIONS])
def test_bad_option_values_are_one_line_before_anything_is_built(peft_base_models, method, kwargs, message):
    with pytest.raises(PeftError, match=message) as err:
        validate_peft(method, **kwargs)  # no model needed: run() calls this before loading one
    assert "\n" not in str(err.value)
    model = copy.deepcopy(peft_base_models["llama"][0])
    with pytest.raises(PeftError, match=message):
        apply_peft(model, method, **kwargs)
    assert not hasattr(model, "peft_config") and not any(isinstance(m, AdaptedLinear) for m in model.modules())


def test_mora_negative_rank_is_fine_under_the_paper_rule(peft_base_models):
    """rank is unused by rank_rule=paper (r̂ = round(√d)), so the paper's configs may leave any value there."""
    model = apply_peft(copy.deepcopy(peft_base_models["llama"][0]), "mora1", rank=-1)
    assert model.peft_config["options"]["rank"] == -1
    layer = model.model.layers[0].mlp.gate_proj  # d = 24: r̂ = round(√24) = 5
    assert layer.adapter.M.shape == (5, 5)


def test_run_validates_options_before_loading_the_model(tmp_path, monkeypatch):
    """`run()` (the CLI, exit 2) rejects a bad option before any weight is loaded, in a dry run too."""
    from helpers import hydra_cfg

    import onelora.run.build
    from onelora.commands.run import run

    def no_model(*_, **__):
        raise AssertionError("the model was built before the options were checked")

    monkeypatch.setattr(onelora.run.build, "build_model", no_model)
    for dry in ("false", "true"):
        overrides = ["experiment=smoke_classification", "peft=lora", "peft.options.rank=abc", f"dry_run={dry}"]
        with hydra_cfg(tmp_path, *overrides) as cfg, pytest.raises(PeftError, match="rank='abc'"):
            run(cfg)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"head": ["clasifier"]}, r"head 'clasifier' matches no module of ViTForImageClassification; did you mean "),
        ({"target_modules": ["q_proj", "v_prj"]}, r"target_modules 'v_prj' matches no module .*named: .*v_proj"),
        ({"exclude_modules": ["classifier", "ouput"]}, r"exclude_modules 'ouput' matches no module"),
    ],
    ids=["head", "target", "exclude"],
)
def test_every_listed_name_must_match_a_module(peft_base_models, kwargs, message):
    model = copy.deepcopy(peft_base_models["vit"][0])
    with pytest.raises(PeftError, match=message) as err:
        apply_peft(model, "onelora", **kwargs)
    if "head" in kwargs:
        assert "classifier" in str(err.value).split("did you mean")[1]
    assert not hasattr(model, "peft_config") and not any(p.requires_grad is False for p in model.parameters())


def test_tied_embeddings_count_as_head():
    """lm_head.weight *is* embed_tokens.weight: trained as the head, counted once, in the head."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=16,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(cfg)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    apply_peft(model, "onelora", head=["lm_head"])
    counts = count_parameters(model)
    body = sum(m.out_features for n, m in model.named_modules() if isinstance(m, AdaptedLinear))
    assert (counts.head, counts.peft) == (64 * 32, body) == (2048, 288)
    assert counts.trainable == 2048 + 288 and counts.groups == {"head": 2048, "adapter": 288}


@pytest.fixture(scope="module")
def peft_timm_vit():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=32, patch_size=8, depth=2
    )
    return model.eval()


@pytest.mark.parametrize("method", ["onelora", "lora_qkv"])
def test_timm_fused_qkv(peft_timm_vit, method):
    """timm's fused qkv Linear is adapted (all linear for onelora, only qkv for lora_qkv)."""
    base = peft_timm_vit
    model = apply_peft(copy.deepcopy(base), method, head="head")
    wrapped = {n for n, m in model.named_modules() if isinstance(m, AdaptedLinear)}
    qkv = {f"blocks.{i}.attn.qkv" for i in range(2)}
    if method == "lora_qkv":
        assert wrapped == qkv
    else:
        assert qkv < wrapped and wrapped == {n for n, m in base.named_modules() if isinstance(m, nn.Linear)} - {"head"}
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), base(x))
    perturb_trainables(model)
    model(x).square().mean().backward()
    adapter_grads = [p.grad for n, p in model.named_parameters() if ".adapter." in n]
    assert adapter_grads and all(g is not None and g.abs().sum() > 0 for g in adapter_grads)
    assert all(p.grad is None for n, p in model.named_parameters() if n.endswith("qkv.weight"))
    with torch.no_grad():
        torch.testing.assert_close(merge_peft(copy.deepcopy(model))(x), model(x), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------- bf16


def test_bf16_llama_onelora_grad_matches_fp64(peft_base_models):
    """Oracles: fp64 math on the bf16 model's own layer inputs and output gradients (tight), and the
    same bf16 weights run end to end in fp64 with an fp64 adapter (loose: bf16 noise of the network)."""
    base, _, inputs = peft_base_models["llama"]
    low = apply_peft(copy.deepcopy(base).to(torch.bfloat16), "onelora")
    ref = apply_peft(copy.deepcopy(base).to(torch.bfloat16).to(torch.float64), "onelora", dtype=torch.float64)
    layers = [m for m in low.modules() if isinstance(m, AdaptedLinear)]
    bs_ref = [m.adapter.b for m in ref.modules() if isinstance(m, AdaptedLinear)]
    assert layers and all(m.adapter.b.dtype == torch.float32 for m in layers)
    with torch.no_grad():
        for i, (m, b_ref) in enumerate(zip(layers, bs_ref)):
            v = torch.randn(b_ref.shape, generator=torch.Generator().manual_seed(i), dtype=torch.float64) * 0.05
            m.adapter.b.copy_(v)
            b_ref.copy_(v)
    seen: dict[nn.Module, list[torch.Tensor]] = {}

    def capture(mod, args, out):  # the layer's bf16 input, and (in backward) its output's gradient
        seen[mod] = [args[0].detach()]
        out.register_hook(lambda g: seen[mod].append(g.detach()))

    hooks = [m.register_forward_hook(capture) for m in layers]
    out = logits(low, inputs)
    for h in hooks:
        h.remove()
    assert out.dtype == torch.bfloat16
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(99))
    (out.float() * w).sum().backward()
    (logits(ref, inputs) * w.double()).sum().backward()
    for m in layers:
        b = m.adapter.b
        assert b.dtype == torch.float32 and b.grad.dtype == torch.float32  # fp32 master and gradient
        x, g = seen[m]
        assert x.dtype == g.dtype == torch.bfloat16
        exact = (g.double() * x.double().sum(-1, keepdim=True)).reshape(-1, b.numel()).sum(0)
        # fp32 accumulation: far inside the rtol 1e-2 a bf16 accumulation would need
        torch.testing.assert_close(b.grad.double(), exact, rtol=1e-4, atol=1e-6 * exact.abs().max().item())
    # End to end the bf16 network's own rounding dominates: 1ᵀx of near-zero-mean activations
    # (o_proj, down_proj inputs) cancels, so single layers reach ~10% (measured: 4.5% overall).
    got = torch.cat([m.adapter.b.grad.double() for m in layers])
    want = torch.cat([b.grad for b in bs_ref])
    assert ((got - want).norm() / want.norm()).item() < 0.1
    for m, b_ref in zip(layers, bs_ref):
        assert torch.nn.functional.cosine_similarity(m.adapter.b.grad.double(), b_ref.grad, dim=0) > 0.99


# --- a family of methods that builds its own layers: api.py only calls its hooks --------------------------------
class _ToyLayer(nn.Module):
    """A family's own layer, not an AdaptedLayer: the base layer's output plus a trained offset `delta.value`."""

    def __init__(self, base: nn.Linear) -> None:
        super().__init__()
        self.base, self.delta, self.on = base, nn.Module(), True
        self.delta.value = nn.Parameter(torch.full((base.out_features,), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (self.delta.value if self.on else 0)


def _toy_family(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Register the family `toy_*` for this test only; returns the log of the hooks that ran."""
    from contextlib import contextmanager

    from onelora.peft import registry

    calls: list[str] = []

    def inject(model: nn.Module, names: list[str], *, seed: int, dtype: torch.dtype) -> int:
        for n in names:
            parent, _, child = n.rpartition(".")
            setattr(model.get_submodule(parent), child, _ToyLayer(model.get_submodule(n)))
        calls.append("inject")
        return len(names)

    def merge(model: nn.Module) -> None:
        for n, m in list(model.named_modules()):
            if isinstance(m, _ToyLayer):
                m.base.bias.data += m.delta.value.data
                parent, _, child = n.rpartition(".")
                setattr(model.get_submodule(parent), child, m.base)
        calls.append("merge")

    @contextmanager
    def disable(model: nn.Module):  # noqa: ANN202
        layers = [m for m in model.modules() if isinstance(m, _ToyLayer)]
        for m in layers:
            m.on = False
        yield
        for m in layers:
            m.on = True

    class ToyOptions(Adapter):
        def __init__(self, layer: nn.Module, dtype: torch.dtype = torch.float32) -> None:
            raise AssertionError("the family builds its own layers")

    hooks = registry.FamilyHooks(
        inject=inject,
        merge=merge,
        disable=disable,
        is_layer=lambda m: isinstance(m, _ToyLayer),
        in_adapter=lambda model, name: name.rsplit(".", 1)[-1] == "delta",
        refuse=lambda model, what: None,
        save=lambda model: (None, {}),
    )
    monkeypatch.setattr(registry, "FAMILIES", dict(registry.FAMILIES))
    registry.register_family("toy_", ToyOptions, hooks, doc="a test family")
    return calls


def test_a_family_of_its_own_layers_needs_only_its_hooks(monkeypatch: pytest.MonkeyPatch) -> None:
    """apply, count, disable and merge a family whose layers the library does not know, through its hooks alone."""
    calls = _toy_family(monkeypatch)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    x = torch.randn(5, 4)
    base_out = model(x)
    apply_peft(model, "toy_any")
    assert calls == ["inject"] and model.peft_config["adapted_layers"] == 2
    counts = count_parameters(model)
    assert (counts.adapted_layers, counts.trainable, counts.groups) == (2, 3 + 2, {"adapter": 3 + 2})
    adapted_out = model(x)
    assert not torch.allclose(adapted_out, base_out)
    with disable_peft(model):
        torch.testing.assert_close(model(x), base_out)
    torch.testing.assert_close(model(x), adapted_out)
    merge_peft(model)
    assert calls == ["inject", "merge"] and not any(isinstance(m, _ToyLayer) for m in model.modules())
    torch.testing.assert_close(model(x), adapted_out)
