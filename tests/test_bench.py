"""`make bench` on a tiny configuration: it runs, writes its CSV, and its memory accounting is consistent."""

from __future__ import annotations

import csv
import sys
import warnings
from pathlib import Path

import pytest
import torch
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


@pytest.mark.parametrize(
    "args,valid",
    [
        (["--peers", "lora,nope"], "lora, dora, vera, miss"),
        (["--models", "vit,resnet"], "vit, llama, depth, qlora, widths"),
        (["--methods", "onelora,lora9"], "bitfit, onelora, lora"),
        (["--compile", "x"], "bitfit, onelora, lora"),
        (["--blocks", "llama2_70b"], "vit_b16, dinov2_l, dit_xl2, llama2_7b, llama2_13b"),
        (["--llama-hidden", "200"], "a multiple of 64"),
        (["--widths", "256,3x"], "comma-separated integers"),
        (["--device", "cuda:7" if torch.cuda.is_available() else "cuda"], "valid: cpu"),
        (["--device", "gpu0"], "valid: cpu"),
    ],
)
def test_bad_values_are_one_line_naming_the_choices(args: list[str], valid: str, tmp_path: Path, capsys) -> None:
    assert bench.main([*args, "--out", str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith("bench: ") and valid in err, err
    assert "Traceback" not in out + err and not list(tmp_path.iterdir())  # nothing measured, nothing written


def test_width_sweep_counts_four_ops_and_one_scalar_per_token_and_layer(tmp_path: Path) -> None:
    """A Llama block has 7 adapted linears: 1LoRA over BitFit is 4 ops per layer (the floor: the forward's sum and
    multiply-add, the backward's g b and gᵀs) and one fp32 scalar per token and layer, 7 x 512 x 4 bytes."""
    args = ["--models", "widths", "--blocks", "", "--widths", "64", "--repeats", "1", "--peers", "lora,miss",
            "--out", str(tmp_path)]  # fmt: skip
    assert bench.main(args) == 0
    rows = {(r["impl"], r["method"]): r for r in csv.DictReader(open(tmp_path / "widths.csv"))}
    assert set(rows) == {("onelora", "bitfit"), ("onelora", "onelora"), ("onelora", "lora"), ("hf_peft", "lora"),
                         ("hf_peft", "miss")}  # fmt: skip
    one, bit = rows["onelora", "onelora"], rows["onelora", "bitfit"]
    assert int(one["ops_above_bitfit"]) == 7 * 4
    assert int(one["saved_bytes"]) - int(bit["saved_bytes"]) == 7 * 512 * 4
    assert int(one["ops"]) < int(rows["hf_peft", "miss"]["ops"]) < int(rows["hf_peft", "lora"]["ops"])
    assert (tmp_path / "widths.png").stat().st_size > 0
    assert "| Llama block h64 | 64 | 512 |" in (tmp_path / "widths.md").read_text()


def test_hf_peers_build_without_warnings() -> None:
    """HF peft asks transformers' deprecated `is_gradient_checkpointing` (a FutureWarning on the bench's screen)."""
    from onelora.costs.bench import hf_peft, llama_stack

    for method in ("lora", "miss"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            hf_peft(llama_stack(64, 1, 1, 16).build(), method)
        assert not [str(w.message) for w in caught]


def test_step_clock_times_cuda_steps_with_events(monkeypatch) -> None:
    """The GPU path (`make bench DEVICE=cuda`) on CPU: the clock records two CUDA events around the step, waits for
    the second and reads their elapsed milliseconds; it never reads the host's clock."""
    from onelora.costs.bench import StepClock

    calls: list[str] = []

    class Event:
        def __init__(self, enable_timing: bool = False) -> None:
            assert enable_timing
            self.t = None

        def record(self) -> None:
            calls.append("record")
            self.t = len(calls)

        def synchronize(self) -> None:
            calls.append("synchronize")

        def elapsed_time(self, end: Event) -> float:
            return 250.0 * (end.t - self.t)

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr("time.perf_counter", lambda: pytest.fail("host clock read on the GPU path"))
    seconds = StepClock(torch.device("cuda"))(lambda: calls.append("step"))
    assert calls == ["record", "step", "record", "synchronize"] and seconds == 0.5


@pytest.mark.slow
@pytest.mark.parametrize("model", ["llama", "vit"])
def test_compile_fullgraph_no_break_same_gradients(model: str) -> None:
    """1LoRA's layer under torch.compile(fullgraph=True): one graph, no break, and the gradients of eager, bit for
    bit (AOTAutograd traces the custom Function's forward and backward; `aot_eager` runs them without codegen)."""
    import torch._dynamo as dynamo

    from onelora.costs.bench import llama_stack, vit_stack
    from onelora.peft import apply_peft

    spec = llama_stack(64, 2, 2, 16) if model == "llama" else vit_stack(64, 2, 2, 32)
    torch.manual_seed(0)
    net = apply_peft(spec.build(), "onelora")
    with torch.no_grad():
        for p in net.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 1e-2)
    inputs = spec.inputs(torch.device("cpu"), torch.float32)
    dynamo.reset()
    explained = dynamo.explain(net)(**inputs)
    assert explained.graph_count == 1 and explained.graph_break_count == 0, explained.break_reasons
    grads = []
    for forward in (net, torch.compile(net, fullgraph=True, backend="aot_eager")):
        net.zero_grad(set_to_none=True)
        spec.loss(forward(**inputs)).backward()
        grads.append({n: p.grad for n, p in net.named_parameters() if p.grad is not None})
    layers = 2 * (7 if model == "llama" else 6)  # every linear of the two blocks
    assert grads[0].keys() == grads[1].keys() and sum(n.endswith("adapter.b") for n in grads[0]) == layers
    assert all(torch.equal(grads[0][n], grads[1][n]) for n in grads[0])


@pytest.mark.slow
def test_compiled_rows_time_the_compiled_model() -> None:
    """`--compile`: a row per method under torch.compile(fullgraph=True), timed, its ops and saved bytes left out
    (inductor's kernels are no aten ops); `aot_eager` here, inductor's C++ build takes minutes on this CPU."""
    from onelora.costs.bench import llama_stack, markdown_table, run_benchmark

    rows = run_benchmark(llama_stack(32, 1, 2, 16), ["bitfit", "onelora"], [], repeats=1, compiled=["onelora"],
                         estimate=False, infer=False, compile_backend="aot_eager")  # fmt: skip
    by = {(r["impl"], r["method"]): r for r in rows}
    row = by["onelora+compile", "onelora"]
    assert row["step_ms"] > 0 and row["ops"] is None and row["saved_ratio_bitfit"] is None
    assert by["onelora", "onelora"]["ops"] > by["onelora", "bitfit"]["ops"]
    assert "| onelora+compile | onelora |" in markdown_table(rows)
