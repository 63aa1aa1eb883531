"""HF peft's tuners as peers (`peft=hf_*`): built by `peft.get_peft_model`, run through the suite's pipeline.

Oracles: onelora itself (HF peft's MiSS with r=1 computes 1LoRA's b·(1ᵀx), so its dry-run counts on every
paper model and a whole seeded training run must equal onelora's); the untouched base model (zero-init
tuners leave the output unchanged at step 0); peft's own `PeftModel.from_pretrained` for the saved adapters.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from helpers import CONFIGS, hydra_cfg, write_cifar10

pytest.importorskip("peft")
from peft import PeftModel  # noqa: E402

from onelora.commands.run import dry_run, run  # noqa: E402
from onelora.errors import user_errors  # noqa: E402
from onelora.models import build_model  # noqa: E402
from onelora.peft import (  # noqa: E402
    PeftError,
    apply_peft,
    count_parameters,
    disable_peft,
    load_peft,
    merge_peft,
    save_peft,
)
from onelora.run.build import build_peft_model  # noqa: E402
from onelora.run.train import train  # noqa: E402

PAPER_MODELS = ["vit_base_in21k", "depth_anything_large", "llama2_7b", "llama2_13b", "dit_xl_2_256"]
HF_CONFIGS = sorted(p.stem for p in (CONFIGS / "peft").glob("hf_*.yaml"))
ZERO_INIT = {"hf_miss_r1", "hf_lora_r1", "hf_vera", "hf_ia3"}  # FourierFT's spectrum starts random in peft


def test_the_shipped_peers() -> None:
    assert {"hf_miss_r1", "hf_lora_r1", "hf_vera", "hf_ia3", "hf_fourierft"} <= set(HF_CONFIGS)


@pytest.mark.parametrize("model", PAPER_MODELS)
def test_hf_miss_r1_dry_run_counts_equal_onelora(tmp_path: Path, model: str, capsys: pytest.CaptureFixture) -> None:
    values = {}
    for method in ("onelora", "hf_miss_r1"):
        with hydra_cfg(tmp_path, f"model={model}", f"peft={method}", "dry_run=true") as cfg:
            values[method] = dry_run(cfg)
    assert values["hf_miss_r1"] == values["onelora"]  # peft, head, trainable, total, adapted layers
    assert values["onelora"]["peft_params"] > 0
    out = capsys.readouterr().out
    assert f"trainable by group: adapter={values['onelora']['peft_params']:,}" in out.split("peft: hf_miss_r1")[1]


def tiny_vit(tmp_path: Path, method: str):
    with hydra_cfg(tmp_path, "model=vit_tiny", "task=classification", f"peft={method}") as cfg:
        torch.manual_seed(0)
        return build_peft_model(cfg)


def vit_base(tmp_path: Path) -> torch.nn.Module:
    """The tiny ViT with the same random weights as `tiny_vit`'s, no method."""
    with hydra_cfg(tmp_path, "model=vit_tiny", "task=classification") as cfg:
        torch.manual_seed(0)
        return build_model(cfg.model, pretrained=False)


@pytest.mark.parametrize("method", HF_CONFIGS)
def test_each_peer_builds_trains_only_its_adapter_and_the_head(tmp_path: Path, method: str) -> None:
    model, counts = tiny_vit(tmp_path, method)
    base, _ = tiny_vit(tmp_path, "head")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        same = torch.allclose(model(pixel_values=x).logits, base(pixel_values=x).logits, atol=1e-6)
    assert same == (method in ZERO_INIT)
    model(pixel_values=x).logits.square().mean().backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    heads = {n for n in trainable if n.startswith("classifier.")}
    assert heads and counts.head == sum(p.numel() for n, p in model.named_parameters() if n in heads)
    assert counts.groups.get("adapter") == counts.peft > 0 and counts.adapted_layers == 12
    # everything else that trains sits inside one of peft's tuner layers, and every part of it gets a gradient
    assert all(".default" in n for n in trainable - heads), trainable - heads
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad)


def test_hf_miss_r1_trains_exactly_like_onelora_and_reports(tmp_path: Path) -> None:
    """The same seeded smoke run: the same record counts and metrics; the report lists both methods."""
    from onelora.report import write_report

    write_cifar10(tmp_path / "data" / "cifar_synthetic")
    records = {}
    for method in ("onelora", "hf_miss_r1"):
        out = tmp_path / "runs" / method
        with hydra_cfg(tmp_path, "experiment=smoke_classification", f"peft={method}", f"paths.output_dir={out}") as cfg:
            records[method], _ = train(cfg)
    ours, theirs = records["onelora"], records["hf_miss_r1"]
    assert theirs["status"] == "ok" and theirs["peft"] == "hf_miss_r1"
    for key in ("peft_params", "head_params", "trainable_params", "total_params", "adapted_layers"):
        assert theirs[key] == ours[key], key
    for name, value in ours["metrics"].items():
        assert theirs["metrics"][name] == pytest.approx(value, rel=1e-5, abs=1e-6), name
    report = write_report([tmp_path / "runs"], tmp_path / "report")
    assert report.files
    summary = (tmp_path / "report" / "summary.csv").read_text()
    assert "hf_miss_r1" in summary and "onelora" in summary


@pytest.mark.parametrize("method", ["hf_lora_r1", "hf_vera", "hf_fourierft"])
def test_peer_adapters_save_in_both_formats(tmp_path: Path, method: str) -> None:
    model, _ = tiny_vit(tmp_path, method)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.1)
    base = vit_base(tmp_path)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(pixel_values=x).logits
    save_peft(model, tmp_path / "ours")
    with torch.no_grad():
        torch.testing.assert_close(load_peft(copy.deepcopy(base), tmp_path / "ours")(pixel_values=x).logits, expected)
    with pytest.warns(UserWarning, match="vLLM"):
        import onelora.peft.hf_format as hf_format

        hf_format._warned_heads = False
        save_peft(model, tmp_path / "peft", format="peft")
    loaded = PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / "peft")).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values=x).logits, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["hf_miss_r1", "hf_vera"])
def test_merge_folds_peer_layers_into_plain_ones(tmp_path: Path, method: str) -> None:
    """Oracle: the unmerged model's outputs; after merging no peft layer is left and the weights changed."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    model, _ = tiny_vit(tmp_path, method)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.1)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(pixel_values=x).logits
        with disable_peft(model):  # the base model alone (the head is the task's, it stays)
            off = model(pixel_values=x).logits
        base = vit_base(tmp_path)
        base.classifier.load_state_dict(model.classifier.state_dict())
        torch.testing.assert_close(off, base(pixel_values=x).logits, atol=1e-6, rtol=1e-6)
        assert torch.equal(model(pixel_values=x).logits, expected)  # back on at exit
        merge_peft(model)
        merged = model(pixel_values=x).logits
    assert not any(isinstance(m, BaseTunerLayer) for m in model.modules())
    assert not hasattr(model, "peft_config") and "hf_peft_model" not in model.__dict__
    assert type(model.vit.layers[0].attention.q_proj) is torch.nn.Linear
    torch.testing.assert_close(merged, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"config_class": "NoSuchConfig"}, "not a tuner config of peft .*valid: .*LoraConfig"),
        ({"config_class": "PromptTuningConfig"}, "not a tuner config"),
        ({"config_class": "MissConfig", "config": {"rank": 1}}, r"MissConfig\(rank=1\) is invalid"),
        ({"config_class": "LoraConfig", "config": {"target_modules": ["q"]}}, "target_modules is set by the suite"),
        ({"config": {"r": 1}}, "config_class is required"),
    ],
)
def test_bad_peer_config_is_one_line(options: dict, message: str) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(PeftError, match=message) as err:
        apply_peft(model, "hf_custom", **options)
    assert "\n" not in str(err.value)
    assert not any(p.requires_grad is False for p in model.parameters())  # refused before touching the model
    assert count_parameters(model).adapted_layers == 0


def test_init_adapter_is_checked_by_the_dry_run_and_bad_ones_exit_2(tmp_path: Path) -> None:
    """A run starts from a saved adapter (`init_adapter=`); the dry run checks it on the meta model; a damaged
    folder is a user error (one line, exit 2 from run.py)."""
    model, _ = tiny_vit(tmp_path, "onelora")
    save_peft(model, tmp_path / "ours")
    save_peft(model, tmp_path / "as_peft", format="peft")
    for folder in ("ours", "as_peft"):
        overrides = ["model=vit_tiny", "task=classification", "peft=onelora", "dry_run=true"]
        with hydra_cfg(tmp_path, *overrides, f"init_adapter={tmp_path / folder}") as cfg:
            assert dry_run(cfg)["peft_params"] == 448
    with hydra_cfg(tmp_path, "model=vit_tiny", "task=classification", "peft=lora", "dry_run=true",
                   f"init_adapter={tmp_path / 'as_peft'}") as cfg:  # fmt: skip
        with pytest.raises(PeftError, match="the adapter is 'onelora' .* model has 'lora'; choose peft=onelora"):
            dry_run(cfg)
    weights = tmp_path / "ours" / "peft_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    overrides = ["model=vit_tiny", "task=classification", "dry_run=true", f"init_adapter={tmp_path / 'ours'}"]
    with hydra_cfg(tmp_path, *overrides) as cfg, pytest.raises(user_errors()) as err:
        run(cfg)  # run.py prints a user error as one line and exits 2 (tests/test_train.py runs the CLI)
    assert "peft_weights.safetensors is not a readable safetensors file" in str(err.value)
    assert "\n" not in str(err.value)
