"""HF peft's adapter format both ways, with the installed peft as the oracle; strict loading of both formats.

Export: a trained (perturbed) onelora model is saved with `format="peft"`; `peft.PeftModel.from_pretrained`
on a fresh copy of the base model must give the same outputs. Import: a peft model (LoRA, DoRA, VeRA,
MiSS r=1) with perturbed adapter weights is saved by peft itself; `load_peft` on a fresh base copy must
give peft's outputs. Strictness: damaged folders end in one `PeftError` naming the file and the fault.
"""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
from torch import nn

peft = pytest.importorskip("peft")
from peft import IA3Config, LoraConfig, MissConfig, PeftModel, VeraConfig, get_peft_model  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from onelora.peft import PeftError, apply_peft, load_peft, save_peft  # noqa: E402

TOL = {"atol": 1e-5, "rtol": 1e-5}
# peft's own note when it loads lora_bias onto a layer without a bias (our BitFit export does that)
pytestmark = pytest.mark.filterwarnings("ignore:`lora_bias=True` was passed")


class Net(nn.Module):
    """Two blocks of linear layers (one without bias, one wider than the input) and a classifier head."""

    def __init__(self, blocks: int = 2, k: int = 10) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.ModuleDict({"up": nn.Linear(k, 14), "down": nn.Linear(14, k, bias=False)}) for _ in range(blocks)
        )
        self.classifier = nn.Linear(k, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = x + blk["down"](torch.tanh(blk["up"](x)))
        return self.classifier(x)


def base_net(blocks: int = 2) -> Net:
    torch.manual_seed(0)
    return Net(blocks).eval()


X = torch.randn(4, 10, generator=torch.Generator().manual_seed(7))


def perturb(model: nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.3)


def trained(method: str, head: bool = False, **options) -> tuple[Net, Net]:
    base = base_net()
    model = apply_peft(copy.deepcopy(base), method, head="classifier" if head else None, seed=3, **options)
    perturb(model)
    return base, model


# ------------------------------------------------------------------------------------- export
EXPORTABLE = {
    "onelora": {},
    "onelora_random": {},
    "lora": {"rank": 2, "alpha": 3.0},
    "dora": {"rank": 2},
    "vera": {"rank": 2},
    "mora1": {},
    "bitfit": {},
    "onelora_bias": {},
    "lora_bias": {},
}


@pytest.mark.parametrize("method", list(EXPORTABLE))
def test_export_loads_in_peft_with_equal_outputs(method, tmp_path):
    """Oracle: peft.PeftModel.from_pretrained on the untouched base model."""
    base, model = trained(method, **EXPORTABLE[method])
    with torch.no_grad():
        ours = model(X)
    assert not torch.allclose(ours, base(X), **TOL)  # the adapter changes something
    save_peft(model, tmp_path, format="peft")
    theirs_model = PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path)).eval()
    with torch.no_grad():
        torch.testing.assert_close(theirs_model(X), ours, **TOL)


def test_export_onelora_is_lora_rank1_with_ones():
    """The exported 1LoRA is a plain LoRA r=1: A = 1ᵀ, B = b, alpha = r = 1 (what vLLM/diffusers serve)."""
    from onelora.peft.hf_format import to_peft

    _, model = trained("onelora")
    config, tensors = to_peft(model)
    assert (type(config).__name__, config.r, config.lora_alpha) == ("LoraConfig", 1, 1)
    assert sorted(config.target_modules) == ["down", "up"]
    up = model.blocks[0]["up"]
    assert torch.equal(tensors["base_model.model.blocks.0.up.lora_A.weight"], torch.ones(1, 10))
    assert torch.equal(tensors["base_model.model.blocks.0.up.lora_B.weight"][:, 0], up.adapter.b.detach())


def test_export_head_goes_to_modules_to_save_with_one_warning(tmp_path):
    base, model = trained("onelora", head=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        save_peft(model, tmp_path / "a", format="peft")
        save_peft(model, tmp_path / "b", format="peft")
    assert sum("vLLM" in str(w.message) for w in caught) <= 1
    assert json.loads((tmp_path / "a" / "adapter_config.json").read_text())["modules_to_save"] == ["classifier"]
    loaded = PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / "a")).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(X), model(X), **TOL)


@pytest.mark.parametrize(
    "method, names", [("mora6", "MoRA type 6"), ("difffit", "γ"), ("onelora_norms", "normalisation"), ("full", "every")]
)
def test_export_without_peft_form_names_the_alternative(method, names, tmp_path):
    _, model = trained(method)
    with pytest.raises(PeftError, match=names) as err:
        save_peft(model, tmp_path, format="peft")
    assert "save_pretrained" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "adapter_config.json").exists()


# ------------------------------------------------------------------------------------- import
IMPORTABLE = {
    "lora": (LoraConfig(r=2, lora_alpha=5, target_modules=["up", "down"]), "lora"),
    "rslora": (LoraConfig(r=2, lora_alpha=5, use_rslora=True, target_modules=["up", "down"]), "lora"),
    "dora": (LoraConfig(r=2, use_dora=True, target_modules=["up", "down"]), "dora"),
    "vera": (VeraConfig(r=2, projection_prng_key=5, target_modules=["up", "down"]), "vera"),
    "miss_r1": (MissConfig(r=1, target_modules=["up", "down"]), "onelora"),
    # init_weights only picks the starting block (False: random); "mini" tiles a (1, mini_r) block along d
    "miss_r1_random_init": (MissConfig(r=1, init_weights=False, target_modules=["up", "down"]), "onelora"),
    "miss_r1_mini": (MissConfig(r=1, init_weights="mini", mini_r=2, target_modules=["up", "down"]), "onelora"),
    "lora_head": (LoraConfig(r=1, target_modules=["up"], modules_to_save=["classifier"]), "lora"),
}


def peft_saved(name: str, path) -> tuple[Net, torch.Tensor]:
    base = base_net()
    model = get_peft_model(copy.deepcopy(base), copy.deepcopy(IMPORTABLE[name][0]))
    perturb(model, seed=2)
    model.eval()
    with torch.no_grad():
        out = model(X)
    model.save_pretrained(str(path))
    return base, out


@pytest.mark.parametrize("name", list(IMPORTABLE))
def test_import_from_peft_gives_peft_outputs(name, tmp_path):
    """Oracle: the peft model that saved the folder."""
    base, theirs = peft_saved(name, tmp_path)
    model = load_peft(copy.deepcopy(base), tmp_path)
    assert model.peft_config["method"] == IMPORTABLE[name][1]
    with torch.no_grad():
        torch.testing.assert_close(model(X), theirs, **TOL)


@pytest.mark.parametrize("method", ["onelora", "onelora_bias", "bitfit", "lora", "vera"])
def test_round_trip_through_peft_format_keeps_method_and_outputs(method, tmp_path):
    base, model = trained(method, **EXPORTABLE[method])
    save_peft(model, tmp_path, format="peft")
    back = load_peft(copy.deepcopy(base), tmp_path)
    assert back.peft_config["method"] == method
    with torch.no_grad():
        torch.testing.assert_close(back(X), model(X), **TOL)


def test_import_of_unsupported_type_names_the_supported(tmp_path):
    model = get_peft_model(base_net(), IA3Config(target_modules=["up", "down"], feedforward_modules=["down"]))
    model.save_pretrained(str(tmp_path))
    with pytest.raises(PeftError, match="peft type 'IA3'.*LORA.*VERA.*MISS") as err:
        load_peft(base_net(), tmp_path)
    assert "\n" not in str(err.value)


def test_import_of_miss_r2_is_refused(tmp_path):
    get_peft_model(base_net(), MissConfig(r=2, target_modules=["up"])).save_pretrained(str(tmp_path))
    with pytest.raises(PeftError, match="r=2.*only r=1"):
        load_peft(base_net(), tmp_path)


def test_import_shape_mismatch_names_the_key(tmp_path):
    peft_saved("lora", tmp_path)
    other = Net(k=12)
    with pytest.raises(PeftError, match=r"blocks\.\d\.(up|down)\.adapter\.lora_[AB]' is \("):
        load_peft(other, tmp_path)


def test_import_of_adapter_on_unsupported_layers_names_them(tmp_path):
    class WithEmbedding(Net):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(5, 10)

    torch.manual_seed(0)
    get_peft_model(WithEmbedding(), LoraConfig(r=1, target_modules=["embed"])).save_pretrained(str(tmp_path))
    torch.manual_seed(0)
    with pytest.raises(PeftError, match="'embed', a Embedding; load_peft reads adapters of nn.Linear"):
        load_peft(WithEmbedding(), tmp_path)


# --------------------------------------------------------------------------------- strictness
def saved_onelora(path, blocks: int = 2, method: str = "onelora") -> Net:
    model = apply_peft(base_net(blocks), method)
    perturb(model)
    save_peft(model, path)
    return model


def test_strict_missing_tensors(tmp_path):
    saved_onelora(tmp_path)
    weights = tmp_path / "peft_weights.safetensors"
    tensors = load_file(str(weights))
    save_file({k: v for i, (k, v) in enumerate(sorted(tensors.items())) if i % 2}, str(weights))
    with pytest.raises(PeftError, match=r"peft_weights\.safetensors: 2 of the 4 tensors .* are missing"):
        load_peft(base_net(), tmp_path)


def test_strict_adapter_from_smaller_model_into_bigger(tmp_path):
    saved_onelora(tmp_path, blocks=2)
    with pytest.raises(PeftError, match="4 of the 8 tensors.*missing.*smaller model"):
        load_peft(base_net(blocks=4), tmp_path)


def test_strict_adapter_from_bigger_model_into_smaller(tmp_path):
    saved_onelora(tmp_path, blocks=4)
    with pytest.raises(PeftError, match="4 tensors fit no adapter of this model.*bigger model"):
        load_peft(base_net(blocks=2), tmp_path)


def test_strict_peft_adapter_from_smaller_model(tmp_path):
    peft_saved("lora", tmp_path)
    with pytest.raises(PeftError, match="select 8 layers of this model but it holds tensors for 4"):
        load_peft(base_net(blocks=4), tmp_path)


@pytest.mark.parametrize("fmt", ["onelora", "peft"])
def test_strict_nan(fmt, tmp_path):
    model = saved_onelora(tmp_path / "x")
    save_peft(model, tmp_path, format=fmt)
    weights = next(tmp_path.glob("*.safetensors"))
    tensors = load_file(str(weights))
    key = sorted(tensors)[0]
    tensors[key][0] = float("nan")
    save_file(tensors, str(weights))
    with pytest.raises(PeftError, match=f"{weights.name}: tensor '{key}' holds NaN"):
        load_peft(base_net(), tmp_path)


@pytest.mark.parametrize("fmt", ["onelora", "peft"])
@pytest.mark.parametrize("damaged", ["weights", "config"])
def test_strict_truncated_files(fmt, damaged, tmp_path):
    model = saved_onelora(tmp_path / "x")
    save_peft(model, tmp_path, format=fmt)
    path = next(tmp_path.glob("*.safetensors" if damaged == "weights" else "*.json"))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(PeftError, match=f"{path.name} is not (a )?readable") as err:
        load_peft(base_net(), tmp_path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "fmt, field, value, message",
    [
        ("onelora", "dtype", "floaty", "dtype='floaty' is damaged"),
        ("onelora", "options", [1], r"options=\[1\] is damaged"),
        ("onelora", "target_modules", 5, "target_modules=5 is not allowed"),
        ("peft", "r", "x", "r='x' in its config is not a positive integer"),
        ("peft", "lora_alpha", None, "lora_alpha=None in its config is not a number"),
        ("peft", "target_modules", None, "target_modules=None in its config names no layers"),
        ("peft", "target_modules", ["up"], r"holds tensors for 'blocks.0.down', .*do not select"),  # was loaded
    ],
)
def test_strict_damaged_config_fields(fmt, field, value, message, tmp_path):
    """A readable JSON config with a field of the wrong type: one PeftError line, not a TypeError later."""
    save_peft(trained("lora", rank=2)[1], tmp_path, format=fmt)
    path = next(tmp_path.glob("*.json"))
    path.write_text(json.dumps({**json.loads(path.read_text()), field: value}))
    with pytest.raises(PeftError, match=message) as err:
        load_peft(base_net(), tmp_path)
    assert "\n" not in str(err.value)


def test_peft_adapter_into_a_model_with_the_same_method(tmp_path):
    """A run's init_adapter: the configured method is applied first, then the peft folder fills it."""
    base, theirs = peft_saved("lora", tmp_path)  # LoRA r=2, alpha=5
    model = apply_peft(copy.deepcopy(base), "lora", rank=2, alpha=5.0, target_modules=["up", "down"])
    load_peft(model, tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(model(X), theirs, **TOL)
    with pytest.raises(PeftError, match="the adapter is 'lora' .* model has 'onelora'; choose peft=lora"):
        load_peft(apply_peft(copy.deepcopy(base), "onelora"), tmp_path)
    with pytest.raises(PeftError, match="LoRA scale is 2.5, the model's 0.5: set alpha"):
        load_peft(apply_peft(copy.deepcopy(base), "lora", rank=2, alpha=1.0), tmp_path)
    hf_miss = apply_peft(copy.deepcopy(base), "hf_miss_r1", config_class="MissConfig", config={"r": 1})
    with pytest.raises(PeftError, match="not into 'hf_miss_r1' .*choose peft=lora"):  # was: "a MissLinear"
        load_peft(hf_miss, tmp_path)


def test_a_model_holding_hf_peft_layers_is_refused_with_one_line(tmp_path):
    """PeftModel.from_pretrained(base, ...) puts peft's layers into `base` in place; load_peft(base, ...) then said
    "adapts 'blocks.0.up', a Linear; load_peft reads adapters of nn.Linear", and apply_peft raised KeyError."""
    _, model = trained("onelora")
    save_peft(model, tmp_path / "out", format="peft")
    base = base_net()
    PeftModel.from_pretrained(base, str(tmp_path / "out"))
    says = (r"the model already holds HF peft layers \(blocks.0.up: peft.tuners.lora.layer.Linear\), put there in "
            r"place by PeftModel.from_pretrained or get_peft_model; give it a fresh model")  # fmt: skip
    for call in (lambda: load_peft(base, tmp_path / "out"), lambda: apply_peft(base, "onelora")):
        with pytest.raises(PeftError, match=says) as e:
            call()
        assert "\n" not in str(e.value)
    with pytest.raises(PeftError, match="already holds HF peft layers"):  # a get_peft_model wrapper alike
        load_peft(get_peft_model(base_net(), LoraConfig(r=1, target_modules=["up"])), tmp_path / "out")
    fresh = load_peft(base_net(), tmp_path / "out")  # the fix the line gives: a fresh model
    with torch.no_grad():
        torch.testing.assert_close(fresh(X), model(X), **TOL)


def tiny_gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=32, n_positions=16, n_embd=16, n_layer=2, n_head=2)
    return GPT2LMHeadModel(cfg).eval()  # eval: no dropout


IDS = torch.randint(0, 32, (2, 6), generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("method", ["onelora", "lora", "vera"])
def test_gpt2_conv1d_adapters_both_ways(method, tmp_path):
    """transformers' Conv1D (GPT-2): exported with fan_in_fan_out, loaded by peft; read back into our layers."""
    base = tiny_gpt2()
    model = apply_peft(copy.deepcopy(base), method, **EXPORTABLE[method])
    perturb(model)
    with torch.no_grad():
        ours = model(IDS).logits
        assert not torch.allclose(ours, base(IDS).logits, **TOL)
    save_peft(model, tmp_path, format="peft")
    assert json.loads((tmp_path / "adapter_config.json").read_text())["fan_in_fan_out"] is True
    theirs = PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path)).eval()
    back = load_peft(copy.deepcopy(base), tmp_path)
    assert back.peft_config["method"] == method
    with torch.no_grad():
        torch.testing.assert_close(theirs(IDS).logits, ours, **TOL)
        torch.testing.assert_close(back(IDS).logits, ours, **TOL)


@pytest.mark.filterwarnings("ignore:fan_in_fan_out is set to False")  # peft's own note on Conv1D
def test_gpt2_peft_all_linear_adapter_is_read(tmp_path):
    """peft's all-linear takes GPT-2's Conv1D layers (not the output layer): the same set is expected here."""
    base = tiny_gpt2()
    theirs = get_peft_model(copy.deepcopy(base), LoraConfig(r=2, target_modules="all-linear"))
    perturb(theirs)
    theirs.eval().save_pretrained(str(tmp_path))
    with torch.no_grad():
        torch.testing.assert_close(load_peft(copy.deepcopy(base), tmp_path)(IDS).logits, theirs(IDS).logits, **TOL)


@pytest.mark.filterwarnings("ignore:the adapter carries a trained head")
def test_tied_head_exports_with_its_embedding_and_round_trips(tmp_path):
    """GPT-2 ties lm_head to wte: peft given lm_head alone unties it (wte stays at its base value), so the
    export saves both, tied again by peft (ensure_weight_tying); a peft file with lm_head alone is refused."""
    base = tiny_gpt2()
    model = apply_peft(copy.deepcopy(base), "onelora", head=["lm_head"])
    perturb(model)
    with torch.no_grad():
        ours = model(IDS).logits
    save_peft(model, tmp_path / "ours", format="peft")
    config = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    assert sorted(config["modules_to_save"]) == ["lm_head", "transformer.wte"] and config["ensure_weight_tying"]
    theirs = PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / "ours")).eval()
    back = load_peft(copy.deepcopy(base), tmp_path / "ours")
    with torch.no_grad():
        torch.testing.assert_close(theirs(IDS).logits, ours, **TOL)
        torch.testing.assert_close(back(IDS).logits, ours, **TOL)
    alone = LoraConfig(r=1, target_modules=["c_fc"], modules_to_save=["lm_head"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft's own notes on Conv1D and tied layers
        get_peft_model(copy.deepcopy(base), alone).save_pretrained(str(tmp_path / "alone"))
    with pytest.raises(PeftError, match="'lm_head' alone, which this model ties to 'transformer.wte'"):
        load_peft(copy.deepcopy(base), tmp_path / "alone")


class Int8Linear(nn.Linear):
    """A stand-in quantized linear (int8 weight, per-row scale, its own forward), as QLoRA-style bases are."""

    def __init__(self, k: int, d: int, bias: bool = True) -> None:
        super().__init__(k, d, bias)
        w = self.weight.detach()
        self.register_buffer("scale", w.abs().amax(1) / 127)
        self.weight = nn.Parameter((w / self.scale[:, None]).round().to(torch.int8), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight.float() * self.scale[:, None], self.bias)


def quantized_net() -> Net:
    torch.manual_seed(0)
    net = Net()
    for blk in net.blocks:
        blk["up"], blk["down"] = Int8Linear(10, 14), Int8Linear(14, 10, bias=False)
    return net.eval()


@pytest.mark.parametrize("method", ["onelora", "lora", "vera", "onelora_bias"])
def test_adapters_trained_on_a_quantized_base_export_and_import(method, tmp_path):
    """The adapter tensors do not depend on the base's storage: peft serves them on the same quantized base."""
    model = apply_peft(quantized_net(), method, **EXPORTABLE[method])
    assert type(model.blocks[0]["up"]).__name__ == "AdaptedQuantized"
    perturb(model)
    with torch.no_grad():
        ours = model(X)
    save_peft(model, tmp_path, format="peft")
    theirs = PeftModel.from_pretrained(quantized_net(), str(tmp_path)).eval()
    back = load_peft(quantized_net(), tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(theirs(X), ours, **TOL)
        torch.testing.assert_close(back(X), ours, **TOL)


def test_peft_is_imported_without_bitsandbytes_advice(tmp_path, monkeypatch, caplog):
    """peft imports bitsandbytes, whose CPU backend logs "pip install kernels" at import: our lazy import of
    peft (hf_*, format='peft') keeps that off the screen and leaves the logger's level as it was.
    Stand-in: a `peft` package that logs as bitsandbytes does when imported."""
    import logging
    import sys

    from onelora.peft.hf_format import _peft

    (tmp_path / "peft").mkdir()
    (tmp_path / "peft" / "__init__.py").write_text(
        "import logging\nlogging.getLogger('bitsandbytes.backends.cpu.ops').warning('Failed to load CPU kernels')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "peft")
    bnb_log = logging.getLogger("bitsandbytes")
    before = bnb_log.level
    bnb_log.setLevel(logging.NOTSET)  # as in a fresh process (another test's import may have raised it)
    try:
        with caplog.at_level(logging.INFO):
            assert _peft().__file__.startswith(str(tmp_path))
        assert not [r for r in caplog.records if r.name.startswith("bitsandbytes")]
        assert bnb_log.level == logging.NOTSET
    finally:
        bnb_log.setLevel(before)


@pytest.mark.parametrize("fmt", ["onelora", "peft"])
def test_save_into_a_file_path_is_one_line(fmt, tmp_path):
    _, model = trained("onelora")
    (tmp_path / "taken").write_text("keep me")
    with pytest.raises(PeftError, match="is a file; save_peft writes a folder"):
        save_peft(model, tmp_path / "taken", format=fmt)
    assert (tmp_path / "taken").read_text() == "keep me"
    with pytest.raises(PeftError, match="cannot create the adapter folder .*; choose a writable path"):
        save_peft(model, tmp_path / "taken" / "sub", format=fmt)


def test_one_format_per_folder(tmp_path):
    """An older adapter in the other format beside a new save would be what load_peft reads: refused."""
    _, model = trained("onelora")
    save_peft(model, tmp_path)
    with pytest.raises(PeftError, match="already holds an adapter in onelora's format .*another folder"):
        save_peft(model, tmp_path, format="peft")
    save_peft(model, tmp_path)  # the same format again overwrites, as before
    save_peft(model, tmp_path / "hf", format="peft")
    with pytest.raises(PeftError, match="already holds an adapter in HF peft's format"):
        save_peft(model, tmp_path / "hf")


def test_named_peft_adapter_in_a_subfolder_is_pointed_at(tmp_path):
    """peft saves an adapter not named 'default' under <dir>/<name>/: the error names that subfolder."""
    model = get_peft_model(base_net(), LoraConfig(r=1, target_modules=["up"]), adapter_name="math")
    model.save_pretrained(str(tmp_path))
    with pytest.raises(PeftError, match="its subfolders 'math' hold peft adapters: give one of them"):
        load_peft(base_net(), tmp_path)
    load_peft(base_net(), tmp_path / "math")
