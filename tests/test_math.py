"""Math reasoning (MetaMathQA, LLaMA): examples, split, bad input, smoke runs, answers, memory estimate, configs."""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from helpers import ROOT, hydra_cfg
from omegaconf import OmegaConf

from onelora.costs.memory import estimate_training_memory, format_memory_lines, saved_activations
from onelora.data.errors import DatasetFormatError
from onelora.data.metamath import (
    IGNORE_INDEX,
    MetaMathDataModule,
    MetaMathDataset,
    PadCollator,
    PromptTooLongError,
    build_example,
    format_prompt,
    split_indices,
)
from onelora.data.synthetic import TOKENIZER_SPECIALS, make_tokenizer, metamath_records, write_metamath
from onelora.errors import ConfigError
from onelora.models.dtypes import apply_dtype_policy
from onelora.run.batching import accumulation_steps, apply_global_batch
from onelora.run.build import build_peft_model
from onelora.run.train import train

SPECIALS = TOKENIZER_SPECIALS


def records(n: int = 40) -> list[dict[str, str]]:
    return metamath_records(n)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


def write_fixture(data_dir: Path, recs: list | None = None) -> Path:
    return write_metamath(data_dir / "metamath_synthetic", recs)


# --- examples ------------------------------------------------------------------------------------
def test_prompt_is_alpaca_with_first_line_as_instruction() -> None:
    single = format_prompt("What is 2 plus 3?")
    assert single.endswith("### Instruction:\nWhat is 2 plus 3?\n\n### Response:") and "### Input" not in single
    multi = format_prompt("Add them.\n2 and 3\nquickly")
    assert "### Instruction:\nAdd them.\n\n### Input:\n2 and 3\nquickly\n\n### Response:" in multi
    assert "paired with an input" in multi


def test_build_example_masks_the_prompt_and_keeps_response_plus_eos(tokenizer) -> None:
    r = records()[4]
    ex = build_example(r["query"], r["response"], tokenizer, max_length=512)
    n = len(tokenizer(format_prompt(r["query"]))["input_ids"])
    ids, labels = ex["input_ids"], ex["labels"]
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id and len(ids) == len(labels)
    assert labels[:n] == [IGNORE_INDEX] * n and IGNORE_INDEX not in labels[n:]
    assert labels[n:] == ids[n:]
    target = [t for t in labels if t != IGNORE_INDEX]
    assert tokenizer.decode(target[:-1]) == r["response"] and target[-1] == tokenizer.eos_token_id
    padded = build_example(r["query"], r["response"], tokenizer, max_length=len(ids) + 5, pad=True)
    assert len(padded["input_ids"]) == len(ids) + 5 and padded["labels"][-5:] == [IGNORE_INDEX] * 5


@pytest.mark.parametrize(
    ("query", "expected_tail"),
    [  # MoRA's / MetaMath's get_input + PROMPT_DICT, run on these queries (issue 11, item 10)
        ("What is 2 plus 3?\n\n", "### Instruction:\nWhat is 2 plus 3?\n\n### Input:\n\n\n\n### Response:"),
        ("Add the numbers.\n\n2 and 3", "### Instruction:\nAdd the numbers.\n\n### Input:\n\n2 and 3\n\n### Response:"),
        ("Add.\n2 and 3\n", "### Instruction:\nAdd.\n\n### Input:\n2 and 3\n\n\n### Response:"),
        ("A\n", "request.\n\n### Instruction:\nA\n\n### Response:"),  # input '' (one empty line after)
    ],
)
def test_input_is_the_other_lines_verbatim_as_mora(query: str, expected_tail: str) -> None:
    prompt = format_prompt(query)
    assert prompt.endswith(expected_tail)
    assert ("paired with an input" in prompt) == ("### Input:" in expected_tail)


def test_prompt_and_response_are_tokenised_together_as_mora(tmp_path: Path) -> None:
    """A tokenizer that merges ":We" across the "### Response:" boundary. MoRA's preprocess (run on the same
    tokenizer and record) gives 69 ids, the first 40 labels -100 (len(tokenize(prompt))): the joint text has
    '▁Response' at 39 and the merged ':We' at 40, which is trained; the prompt alone ends in '▁Response:'."""
    tok = make_tokenizer(tmp_path / "merging")
    tok.add_tokens([":We"])
    query, response = "What is 2 plus 3?", "We add 2 and 3 to get 5.\nThe answer is: 5"
    ex = build_example(query, response, tok, max_length=512)
    ids, labels = ex["input_ids"], ex["labels"]
    assert len(ids) == 69 and labels[:40] == [IGNORE_INDEX] * 40 and labels[40:] == ids[40:]
    assert tok.convert_ids_to_tokens(ids[38:41]) == ["\n\n###", "▁Response", ":We"]
    assert ids == tok(format_prompt(query) + response + "</s>")["input_ids"] and ids[-1] == tok.eos_token_id
    prompt_ids = tok(format_prompt(query))["input_ids"]
    assert len(prompt_ids) == 40 and tok.convert_ids_to_tokens(prompt_ids[-1]) == "▁Response:"
    assert ids[:40] != prompt_ids  # the boundary token differs: masking by count, not by matching
    ds = MetaMathDataset([{"query": query, "response": response}], tok, max_length=512)
    assert ds[0]["input_ids"].tolist() == ids and ds[0]["labels"].tolist() == labels


def test_truncation_keeps_the_prompt_response_boundary(tokenizer) -> None:
    r = records()[1]
    n = len(tokenizer(format_prompt(r["query"]))["input_ids"])
    full = build_example(r["query"], r["response"], tokenizer, max_length=512)
    cut = build_example(r["query"], r["response"], tokenizer, max_length=n + 3)
    assert len(cut["input_ids"]) == n + 3 and cut["input_ids"] == full["input_ids"][: n + 3]
    assert cut["labels"][:n] == [IGNORE_INDEX] * n and cut["labels"][n:] == full["input_ids"][n : n + 3]
    with pytest.raises(PromptTooLongError):  # the prompt alone fills max_length: never a target of nothing
        build_example(r["query"], r["response"], tokenizer, max_length=n)


def test_tokenizer_without_eos_is_a_clear_error(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    tok = make_tokenizer(tmp_path / "noeos", eos=False)
    assert capfd.readouterr() == ("", "")  # building smoke_math's data prints nothing (tokenizers' bar: blank lines)
    with pytest.raises(DatasetFormatError, match="eos_token"):
        build_example("What is 1 plus 1?", "2", tok, 64)


def test_collator_pads_right_with_mask_and_ignored_labels(tokenizer) -> None:
    ds = MetaMathDataset(records(4), tokenizer, max_length=512)
    batch = PadCollator(tokenizer.eos_token_id)([ds[0], ds[1]])
    lengths = [len(ds[0]["input_ids"]), len(ds[1]["input_ids"])]
    assert batch["input_ids"].shape == (2, max(lengths))
    for i, k in enumerate(lengths):
        assert batch["attention_mask"][i].tolist() == [1] * k + [0] * (max(lengths) - k)
        assert (batch["labels"][i, k:] == IGNORE_INDEX).all() and torch.equal(
            batch["input_ids"][i, :k], ds[i]["input_ids"]
        )


# --- split and bad input ------------------------------------------------------------------------
@pytest.mark.parametrize("n", [5, 37, 1000])
def test_split_is_deterministic_disjoint_and_80_20(n: int) -> None:
    tr, va = split_indices(n, 0.2, split_seed=42)
    tr2, va2 = split_indices(n, 0.2, split_seed=42)
    assert tr.tolist() == tr2.tolist() and va.tolist() == va2.tolist()
    assert not set(tr) & set(va) and set(tr) | set(va) == set(range(n))
    assert abs(len(va) - 0.2 * n) <= 1
    assert split_indices(n, 0.2, split_seed=7)[1].tolist() != va.tolist() or n < 10


def test_split_does_not_depend_on_the_run_seed(tmp_path: Path) -> None:
    folder = write_fixture(tmp_path)
    splits = [
        MetaMathDataModule(str(folder / "MetaMathQA-395K.json"), str(folder / "tokenizer"), seed=s).split_records()
        for s in (0, 1, 3)
    ]
    assert all(s == splits[0] for s in splits)
    assert len(splits[0][1]) == 8 and not {r["query"] for r in splits[0][0]} & {r["query"] for r in splits[0][1]}


def test_empty_split_is_a_clear_error() -> None:
    with pytest.raises(DatasetFormatError, match="empty validation split"):
        split_indices(2, 0.2)


def test_bad_records_are_skipped_counted_and_reported(
    tmp_path: Path, tokenizer, caplog: pytest.LogCaptureFixture
) -> None:
    bad = [{"query": "What is 1 plus 1?"}, {"response": "2"}, {"query": 3, "response": "x"}, "not a record"]
    long = {"query": "What is " + "one plus " * 200 + "one?", "response": "The answer is: 201"}
    recs = records(30) + bad + [long]
    ds = MetaMathDataset(recs, tokenizer, max_length=96)
    assert ds.skipped["malformed"] == 4 and ds.skipped["prompt_too_long"] == 1
    assert len(ds) + sum(ds.skipped.values()) == len(recs)
    folder = write_fixture(tmp_path, recs)
    dm = MetaMathDataModule(str(folder / "MetaMathQA-395K.json"), str(folder / "tokenizer"), max_length=96)
    with caplog.at_level("WARNING", logger="onelora"):
        dm.setup("fit")
    total = {k: dm.skipped["train"].get(k, 0) + dm.skipped["val"].get(k, 0) for k in ("malformed", "prompt_too_long")}
    assert total == {"malformed": 4, "prompt_too_long": 1} and "skipped" in caplog.text


@pytest.mark.parametrize(
    ("content", "match"),
    [(None, "does not exist"), ('{"a": 1}', "no records"), ("[]", "no records"), ("[1, 2", "neither a JSON")],
)
def test_unreadable_files_are_clear_errors(tmp_path: Path, content: str | None, match: str) -> None:
    folder = write_fixture(tmp_path)
    path = folder / "MetaMathQA-395K.json"
    if content is None:
        path.unlink()
    else:
        path.write_text(content)
    with pytest.raises(DatasetFormatError, match=match):
        MetaMathDataModule(str(path), str(folder / "tokenizer")).setup("fit")


def test_only_malformed_records_leave_an_empty_split(tmp_path: Path) -> None:
    folder = write_fixture(tmp_path, [{"question": "q", "answer": "a"}] * 10)
    with pytest.raises(DatasetFormatError, match="split .* is empty"):
        MetaMathDataModule(str(folder / "MetaMathQA-395K.json"), str(folder / "tokenizer")).setup("fit")


# --- the smoke runs and the answers script -------------------------------------------------------
@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = {}
    for method in ("onelora", "lora_qkv"):
        tmp = tmp_path_factory.mktemp(f"smoke_{method}")
        write_fixture(tmp / "data")
        with hydra_cfg(tmp, "experiment=smoke_math", f"peft={method}") as cfg:
            apply_global_batch(cfg)  # train.py computes it as well; the smoke config sets the same value
            record, task = train(cfg)
            OmegaConf.save(cfg, tmp / "run" / "config.yaml")
        out[method] = (tmp / "run", record, task)
    return out


@pytest.mark.parametrize("method", ["onelora", "lora_qkv"])
def test_smoke_math_trains_in_bf16_and_records_the_validation_loss(smoke_runs: dict, method: str) -> None:
    run, record, task = smoke_runs[method]
    assert record["status"] == "ok" and record["metric_name"] == "val_loss" and record["metric_direction"] == "min"
    assert math.isfinite(record["metric_best"]) and record["metrics"]["val_loss"] >= record["metric_best"] - 1e-9
    assert record["metrics"]["val_tokens"] > 0
    assert json.loads((run / "result.json").read_text())["metric_best"] == record["metric_best"]
    assert task.trainer.global_step == 4  # 2 epochs × 4 micro-batches / accumulation 2
    assert task.trainer.accumulate_grad_batches == 2 and task.trainer.precision == "bf16-mixed"
    dtypes = {(p.requires_grad, p.dtype) for p in task.model.parameters()}
    assert dtypes == {(False, torch.bfloat16), (True, torch.float32)}
    trained = {n.split(".adapter.")[-1] for n, p in task.model.named_parameters() if p.requires_grad}
    assert trained == ({"b"} if method == "onelora" else {"lora_A", "lora_B"})
    assert record["adapted_layers"] == (14 if method == "onelora" else 6)


def test_answers_script_runs_on_the_checkpoint(smoke_runs: dict) -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import math_answers
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    run, _, _ = smoke_runs["onelora"]
    summary = math_answers.main([str(run), "--n", "3", "--max-new-tokens", "6", "--batch-size", "2"])
    rows = [json.loads(line) for line in (run / "answers.jsonl").read_text().splitlines()]
    assert summary["n"] == 3 == len(rows) and 0.0 <= summary["exact_match"] <= 1.0
    assert all(r["reference"] is not None for r in rows)
    assert math_answers.normalize(math_answers.extract_answer("so\nThe answer is: $1,200.")) == "1200"
    assert math_answers.normalize("5.0") == math_answers.normalize("5")


def test_answers_script_on_a_wrong_run_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import math_answers
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    (tmp_path / "config.yaml").write_text("task: {name: mde}\npaths: {output_dir: x}\n")  # not a math run
    with pytest.raises(SystemExit) as stop:
        math_answers.main([str(tmp_path), "--n", "1"])
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and "is a mde run" in err and "\n" not in err  # was an AttributeError traceback


# --- batching, strategies, configs --------------------------------------------------------------
def test_accumulation_is_computed_from_the_global_batch() -> None:
    assert (
        accumulation_steps(128, 4, 16) == 2
        and accumulation_steps(128, 2, 64) == 1
        and accumulation_steps(128, 4, 1) == 32
    )
    with pytest.raises(ConfigError, match="not a multiple"):
        accumulation_steps(128, 3, 16)


@pytest.mark.parametrize(
    ("experiment", "model", "world", "micro", "accumulation"),
    [
        ("math_llama2_7b", "llama2_7b", 16, 4, 2),
        ("math_llama2_13b", "llama2_13b", 64, 2, 1),
        ("math_llama2_7b_1gpu", "llama2_7b", 1, 4, 32),
    ],
)
def test_math_experiments_compose_with_the_paper_batch(
    tmp_path: Path, experiment, model, world, micro, accumulation
) -> None:
    with hydra_cfg(tmp_path, f"experiment={experiment}") as cfg:
        assert cfg.name == experiment and cfg.model.name == model and cfg.task.metric.name == "val_loss"
        assert cfg.trainer.devices * cfg.trainer.num_nodes == world and cfg.data.module.batch_size == micro
        assert apply_global_batch(cfg) == accumulation == cfg.trainer.accumulate_grad_batches
        assert (
            cfg.trainer.precision == "bf16-mixed"
            and cfg.task.optimizer.lr == 3e-4
            and cfg.task.scheduler.warmup_ratio == 0.03
        )
        assert cfg.data.module.max_length == 512 and cfg.data.module.split_seed == 42 and cfg.trainer.max_epochs == 3
    manifest = OmegaConf.load(ROOT / "experiments" / ("fig4.yaml" if "13b" in experiment else "fig3.yaml"))
    if not experiment.endswith("1gpu"):
        assert manifest.experiment == experiment and manifest.metric.name == "val_loss"


@pytest.mark.parametrize(
    ("method", "scaling"), [("lora", 16.0), ("lora_qkv", 16.0), ("dora", 16.0), ("mora1", None), ("mora6", None)]
)
def test_math_adapters_follow_moras_alpha_and_dropout(tmp_path: Path, method: str, scaling: float | None) -> None:
    """MoRA's train.py: lora_alpha=16, lora_dropout=0.05 (s = 16 at r = 1); MoRA itself ignores alpha (scaling 1.0
    in peft-mora's update_layer), so only its dropout changes. Other tasks keep their own choice (alpha 1, no dropout)."""
    with hydra_cfg(tmp_path, "experiment=smoke_math", f"peft={method}") as cfg:
        assert cfg.peft.options.dropout == 0.05 and cfg.peft.options.get("alpha") == scaling
        model, _ = build_peft_model(cfg)
    adapters = [m.adapter for m in model.modules() if hasattr(m, "adapter")]
    assert adapters and all(a.dropout.p == 0.05 for a in adapters)
    assert all(getattr(a, "scaling", None) == scaling for a in adapters)
    with hydra_cfg(tmp_path, "experiment=smoke_classification", f"peft={method}") as cfg:
        assert cfg.peft.options.dropout == 0.0 and cfg.peft.options.get("alpha") in (1.0, None)
    with hydra_cfg(tmp_path, "experiment=math_llama2_7b", f"peft={method}", "peft.options.dropout=0.1") as cfg:
        assert cfg.peft.options.dropout == 0.1  # the command line still wins


def test_fsdp_strategy_instantiates_and_wraps_layers_and_adapters(tmp_path: Path) -> None:
    from hydra.utils import instantiate
    from lightning.pytorch.strategies import FSDPStrategy
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    from onelora.peft import Adapter

    with hydra_cfg(tmp_path, "experiment=math_llama2_7b", "trainer=fsdp") as cfg:
        strategy = instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, FSDPStrategy) and strategy.kwargs["use_orig_params"]
    assert strategy.kwargs["auto_wrap_policy"]._module_classes == {LlamaDecoderLayer, Adapter}
    assert strategy.mixed_precision.param_dtype is None and strategy.mixed_precision.buffer_dtype is None


@pytest.mark.parametrize("overrides", [(), ("trainer=fsdp",), ("experiment=math_llama2_13b",),
                                       ("experiment=math_llama2_7b_1gpu",)])  # fmt: skip
def test_math_clips_the_gradient_norm_at_one(tmp_path: Path, overrides: tuple[str, ...]) -> None:
    """MoRA trains through the HF Trainer: DeepSpeed's `gradient_clipping: "auto"` takes TrainingArguments'
    max_grad_norm, 1.0 by default (transformers as MoRA pins it). Every strategy of the math experiments clips it."""
    with hydra_cfg(tmp_path, "experiment=math_llama2_7b", *overrides) as cfg:
        assert cfg.trainer.gradient_clip_val == 1.0
        assert cfg.trainer.get("gradient_clip_algorithm", "norm") in (None, "norm")
        assert "gradient_clipping" not in (cfg.trainer.get("strategy") or {})  # DeepSpeed takes the trainer's


def test_deepspeed_config_takes_the_trainers_clip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Lightning writes `trainer.gradient_clip_val` into DeepSpeed's `gradient_clipping` (deepspeed itself is not
    installed here: its availability and the logger the constructor sets are faked; the config is Lightning's code)."""
    import types

    import lightning.pytorch.strategies.deepspeed as lds
    from hydra.utils import instantiate

    monkeypatch.setattr(lds, "_DEEPSPEED_AVAILABLE", True)
    monkeypatch.setattr(lds, "_DEEPSPEED_GREATER_EQUAL_0_16", True)
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: object() if n == "deepspeed" else find_spec(n, *a))
    logger = types.SimpleNamespace(setLevel=lambda level: None)  # all the strategy's constructor touches
    monkeypatch.setitem(sys.modules, "deepspeed", types.SimpleNamespace(utils=types.SimpleNamespace(
        logging=types.SimpleNamespace(logger=logger))))  # fmt: skip
    with hydra_cfg(tmp_path, "experiment=math_llama2_7b") as cfg:
        strategy = instantiate(cfg.trainer.strategy)
        clip = cfg.trainer.gradient_clip_val
    trainer = types.SimpleNamespace(accumulate_grad_batches=2, gradient_clip_val=clip)
    strategy._lightning_module = types.SimpleNamespace(trainer=trainer)
    strategy.config["train_micro_batch_size_per_gpu"] = 4  # else read from the trainer's loader
    strategy._format_batch_size_and_grad_accum_config()
    assert strategy.config["gradient_clipping"] == 1.0


def test_fsdp_clips_the_gradient_norm_through_the_root_module(tmp_path: Path) -> None:
    """Lightning's FSDP precision refuses norm clipping (no reference to the root module); ours clips with the root's
    `clip_grad_norm_` (the norm over every rank's shards). One SGD step at lr 1 moves each weight by its clipped
    gradient: the same as torch's clip_grad_norm_ on the unwrapped model. FSDP on CPU needs the module wrapped
    by hand (Lightning passes no CPU device to FSDP); the strategy is the math experiment's."""
    import lightning as L
    import torch.distributed as dist
    from hydra.utils import instantiate
    from torch import nn
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    class Tiny(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2))

        def configure_model(self) -> None:
            if not isinstance(self.net, FSDP):
                self.net = FSDP(self.net, device_id=torch.device("cpu"), use_orig_params=True)

        def training_step(self, batch: list[torch.Tensor], _: int) -> torch.Tensor:
            return (self.net(batch[0]) * 10).sum()

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=1.0)

    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    module = Tiny()
    before = [p.detach().clone() for p in module.net.parameters()]
    ref = copy.deepcopy(module.net)
    (ref(x) * 10).sum().backward()
    assert torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0) > 10  # the clip is active
    with hydra_cfg(tmp_path, "experiment=math_llama2_7b", "trainer=fsdp") as cfg:
        strategy = instantiate(cfg.trainer.strategy)
        clip = cfg.trainer.gradient_clip_val
    trainer = L.Trainer(accelerator="cpu", devices=1, strategy=strategy, gradient_clip_val=clip, max_steps=1,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)  # fmt: skip
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=3)
    try:
        with pytest.warns(UserWarning):  # the auto-wrap policy is ignored: the module is already wrapped
            trainer.fit(module, loader)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    for b, p, r in zip(before, module.net.parameters(), ref.parameters()):
        torch.testing.assert_close(b - p.detach(), r.grad, atol=1e-6, rtol=1e-5)


def test_fsdp_dtype_check_names_methods_that_cannot_be_flattened(tmp_path: Path) -> None:
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    from onelora.peft import Adapter
    from onelora.run.strategies import check_uniform_dtypes

    for method, ok in (("onelora", True), ("lora_qkv", True), ("bitfit", False)):
        with hydra_cfg(tmp_path, "experiment=smoke_math", f"peft={method}") as cfg:
            model, _ = build_peft_model(cfg)
        apply_dtype_policy(model)
        if ok:
            check_uniform_dtypes(model, [LlamaDecoderLayer, Adapter])
        else:
            with pytest.raises(ConfigError, match="trainer=deepspeed"):
                check_uniform_dtypes(model, [LlamaDecoderLayer, Adapter])


def test_deepspeed_config_composes_and_says_what_is_missing(tmp_path: Path) -> None:
    from hydra.utils import instantiate

    with hydra_cfg(tmp_path, "experiment=math_llama2_13b", "trainer=deepspeed") as cfg:
        assert cfg.trainer.strategy.stage == 2 and cfg.trainer.strategy.exclude_frozen_parameters
        if importlib.util.find_spec("deepspeed") is None:
            with pytest.raises(Exception, match="pip install deepspeed") as e:
                instantiate(cfg.trainer.strategy)
            assert isinstance(e.value.__cause__ or e.value, ConfigError)


# --- memory estimate ---------------------------------------------------------------------------
def tiny_llama(method: str, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    from onelora.peft import apply_peft

    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=4, vocab_size=128, max_position_embeddings=128)  # fmt: skip
    model = LlamaForCausalLM(config)
    targets = ["q_proj", "k_proj", "v_proj"] if method == "lora_qkv" else "all-linear"
    apply_peft(model, "lora" if method == "lora_qkv" else method, target_modules=targets, exclude_modules=["lm_head"])
    return apply_dtype_policy(model)


@pytest.mark.parametrize("method", ["onelora", "lora", "dora", "mora6"])
def test_meta_trace_of_saved_activations_matches_real_tensors(method: str) -> None:
    model = tiny_llama(method)
    ids = torch.randint(0, 128, (2, 64))
    real = saved_activations(model, {"input_ids": ids, "labels": ids, "use_cache": True}, "bfloat16")
    meta_model = copy.deepcopy(model).to("meta")
    meta = saved_activations(
        meta_model, {"input_ids": ids.to("meta"), "labels": ids.to("meta"), "use_cache": True}, "bfloat16"
    )
    assert real["total"] > 0 and abs(meta["total"] - real["total"]) <= 0.03 * real["total"], (meta, real)


def test_estimate_terms_and_checkpointing() -> None:
    est = estimate_training_memory(tiny_llama("onelora"), batch_size=2, seq_len=64)
    n_trainable = 2 * (4 * 64 + 2 * 128 + 64)
    assert (
        est["trainable_params"] == n_trainable
        and est["gradients"] == 4 * n_trainable
        and est["optimizer"] == 8 * n_trainable
    )
    assert est["weights_bfloat16"] == 2 * (2 * 128 * 64 + 2 * (4 * 64 * 64 + 3 * 64 * 128 + 2 * 64) + 64)
    assert est["total"] == est["weights"] + est["gradients"] + est["optimizer"] + est["activations"]
    ckpt = estimate_training_memory(tiny_llama("onelora"), batch_size=2, seq_len=64, gradient_checkpointing=True)
    assert ckpt["activations"] < est["activations"] == ckpt["activations_no_checkpointing"]
    lines = format_memory_lines(est)
    assert lines[-1] == f"memory_total_bytes={est['total']}"


def test_figure4_lora_on_all_layers_needs_more_memory_than_lora_qkv_and_onelora(tmp_path: Path) -> None:
    """LLaMA-2 13B, micro-batch 2 × 512 tokens, bf16 (the paper's Figure 4 argument), on the meta device."""
    from onelora.costs.memory import estimate_from_config

    total = {}
    for method in ("lora", "lora_qkv", "onelora"):
        with hydra_cfg(tmp_path, "experiment=math_llama2_13b", f"peft={method}", "dry_run=true") as cfg:
            model, _ = build_peft_model(cfg, meta=True)
            total[method] = estimate_from_config(model, cfg)["total"]
    assert total["lora"] > total["lora_qkv"] > total["onelora"] > 24 * 2**30
