"""`make bench` on a tiny configuration: it runs, writes its CSV, and its memory accounting is consistent."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from helpers import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import bench  # noqa: E402

COLUMNS = {"impl", "method", "step_ms", "saved_bytes", "state_bytes", "peak_mem_bytes", "step_ratio_bitfit", "est_saved_bytes",
           "saved_ratio_bitfit", "infer_ms", "infer_ratio_base"}  # fmt: skip


def test_bench_tiny_writes_csv_and_table(tmp_path: Path) -> None:
    args = ["--models", "vit,llama", "--vit-hidden", "32", "--vit-layers", "2", "--vit-image", "32",
            "--llama-hidden", "32", "--llama-layers", "2", "--llama-seq", "16", "--repeats", "1",
            "--methods", "onelora,lora,dora", "--out", str(tmp_path)]  # fmt: skip
    assert bench.main(args) == 0
    for name in ("vit_h32_l2_b4x32", "llama_h32_l2_b2x16"):
        rows = list(csv.DictReader(open(tmp_path / f"{name}.csv")))
        assert COLUMNS <= set(rows[0])
        by = {(r["impl"], r["method"]): r for r in rows}
        assert set(by) == {("onelora", m) for m in ("bitfit", "onelora", "lora", "dora")} | {
            ("hf_peft", m) for m in ("lora", "dora", "vera", "miss")
        }
        assert float(by["onelora", "bitfit"]["step_ratio_bitfit"]) == 1.0
        # saved activations are counted, not timed: 1LoRA keeps one scalar per token and layer beyond BitFit,
        # exactly as HF peft's MiSS at r=1 (the same method); LoRA keeps its layers' inputs
        onelora, miss = int(by["onelora", "onelora"]["saved_bytes"]), int(by["hf_peft", "miss"]["saved_bytes"])
        assert int(by["onelora", "bitfit"]["saved_bytes"]) < onelora <= miss
        assert int(by["onelora", "lora"]["saved_bytes"]) > onelora
        assert (tmp_path / f"{name}.md").read_text().count("| onelora |") == 4


def test_layer_benchmark_runs_every_variant() -> None:
    rows = bench.layer_benchmark([(16, 8, 12)], repeats=1)
    assert {r["variant"] for r in rows} == {"bitfit", "listing", "additive", "merged_weight", "onelora_fast"}
