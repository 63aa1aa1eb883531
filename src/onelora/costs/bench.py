"""Training-cost benchmark of every method, ours and HF peft's, against BitFit measured in the same run.

For each (impl, method) on a block stack (a `transformers` ViT or Llama built from a config):
- `step_ms`: median wall-clock of forward + backward + AdamW step, over repeats interleaved across methods
  (so drift of the machine hits all methods alike);
- `saved_bytes`: activations autograd keeps for backward in the model's forward, each storage counted once (q, k
  and v share their input), parameters and buffers excluded (the costs package's `SavedBytes`, the one meter);
- `ops`: top-level aten ops of one training step (forward + backward; `onelora.costs.opcount`): on a GPU each is at
  least one kernel launch, whatever the width;
- `state_bytes`: parameters (all) + gradients and AdamW's two moments (trainable ones);
- `peak_mem_bytes`: peak allocated accelerator memory of one step (GPU only; step times there are CUDA events);
- `infer_ms`: forward time of the merged model (plain layers again), next to the base model's;
- ratios of step time and saved bytes to BitFit's.
"""

from __future__ import annotations

import copy
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..peft import apply_peft, merge_peft
from .memory import saved_activations
from .meters import SavedBytes
from .opcount import top_level_ops

OURS = ["bitfit", "onelora", "lora", "dora", "vera", "mora1", "mora6", "difffit", "full"]
PEERS = ["lora", "dora", "vera", "miss"]  # HF peft at r=1 (MiSS r=1 = 1LoRA)


@dataclass
class BenchModel:
    name: str
    build: Callable[[], nn.Module]
    inputs: Callable[[torch.device, torch.dtype], dict[str, Tensor]]
    loss: Callable[[Any], Tensor]


def vit_stack(hidden: int = 384, layers: int = 12, batch: int = 4, image: int = 224, patch: int = 16) -> BenchModel:
    from transformers import ViTConfig, ViTModel

    cfg = ViTConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64),
                    intermediate_size=4 * hidden, image_size=image, patch_size=patch)  # fmt: skip
    return BenchModel(
        f"vit_h{hidden}_l{layers}_b{batch}x{image}",
        lambda: ViTModel(cfg, add_pooling_layer=False),
        lambda dev, dt: {"pixel_values": torch.randn(batch, 3, image, image, device=dev, dtype=dt)},
        lambda out: out.last_hidden_state.float().pow(2).mean(),
    )


def depth_stack(data: str = "kitti", hidden: int = 384, layers: int = 12, batch: int = 2) -> BenchModel:
    """A DINOv2 encoder (Depth Anything's backbone) at the training input size of `configs/data/<data>.yaml`, as
    the data code computes it (`onelora.data.depth.dataset_input_hw`, the one source of the input size)."""
    import yaml
    from transformers import Dinov2Config, Dinov2Model

    from ..data.depth import dataset_input_hw
    from ..report.manifest import ROOT

    module = yaml.safe_load((ROOT / "configs" / "data" / f"{data}.yaml").read_text())["module"]
    policy = {k: module[k] for k in ("keep_aspect", "multiple_of", "resize_method") if k in module}
    h, w = dataset_input_hw(module["dataset"], module.get("input_size"), **policy)
    cfg = Dinov2Config(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64),
                       image_size=max(h, w), patch_size=14)  # fmt: skip
    return BenchModel(
        f"dinov2_h{hidden}_l{layers}_b{batch}x{h}x{w}_{data}",
        lambda: Dinov2Model(cfg),
        lambda dev, dt: {"pixel_values": torch.randn(batch, 3, h, w, device=dev, dtype=dt)},
        lambda out: out.last_hidden_state.float().pow(2).mean(),
    )


def llama_stack(hidden: int = 512, layers: int = 4, batch: int = 2, seq: int = 256) -> BenchModel:
    from transformers import LlamaConfig, LlamaModel

    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=int(hidden * 2.6875), num_hidden_layers=layers,
                      num_attention_heads=max(1, hidden // 64), num_key_value_heads=max(1, hidden // 64),
                      vocab_size=1000, max_position_embeddings=max(seq, 128))  # fmt: skip
    return BenchModel(
        f"llama_h{hidden}_l{layers}_b{batch}x{seq}",
        lambda: LlamaModel(cfg),
        lambda dev, dt: {"inputs_embeds": torch.randn(batch, seq, hidden, device=dev, dtype=dt)},
        lambda out: out.last_hidden_state.float().pow(2).mean(),
    )


def hf_peft(model: nn.Module, method: str) -> nn.Module:
    """HF peft's version of a method at r=1 on every linear layer, its adapters in fp32 (its default)."""
    import peft

    targets = "all-linear"
    if method in ("lora", "dora"):
        config = peft.LoraConfig(r=1, lora_alpha=1, target_modules=targets, use_dora=method == "dora")
    elif method == "vera":
        config = peft.VeraConfig(r=1, target_modules=targets)
    elif method == "miss":
        config = peft.MissConfig(r=1, target_modules=targets)
    else:
        raise ValueError(f"no HF peft peer for {method!r}")
    with warnings.catch_warnings():  # peft asks transformers' deprecated `is_gradient_checkpointing`: not ours to say
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        return peft.get_peft_model(model, config)


@dataclass
class Row:
    impl: str
    method: str
    model: nn.Module
    trainable: int = 0
    step_s: list[float] = field(default_factory=list)
    saved_bytes: int = 0
    state_bytes: int = 0
    peak_mem_bytes: int | None = None
    infer_ms: float | None = None
    est_saved_bytes: int | None = None
    ops: int | None = None
    compiled: bool = False


def saved_activation_bytes(step: Callable[[], Tensor], model: nn.Module) -> int:
    """Bytes autograd saves in `model`'s forward during `step()` (the costs package's meter), then backward."""
    with SavedBytes(model) as meter:
        loss = step()
    loss.backward()
    return meter.nbytes


class StepClock:
    """Seconds of `fn()`: CUDA events on a GPU (the device's time, queued kernels included), else perf_counter."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def __call__(self, fn: Callable[[], Any]) -> float:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0


def state_bytes(model: nn.Module) -> int:
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return total + 3 * trainable  # + gradients + AdamW's exp_avg and exp_avg_sq (same dtype as the parameter)


def shared_weights(model: nn.Module) -> dict[int, Any]:
    """A deepcopy memo that keeps the linear layers' weights shared: every method freezes them, and at LLaMA-2-13B
    width one copy per method would not fit a laptop."""
    return {id(m.weight): m.weight for m in model.modules() if isinstance(m, nn.Linear)}


def run_benchmark(
    spec: BenchModel,
    ours: list[str] = OURS,
    peers: list[str] = PEERS,
    repeats: int = 5,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    log: Callable[[str], None] = print,
    compiled: list[str] = (),
    estimate: bool = True,
    infer: bool = True,
    compile_backend: str = "inductor",
) -> list[dict[str, Any]]:
    """`compiled`: methods of ours timed again under `torch.compile(fullgraph=True)` (impl "onelora+compile");
    `estimate`: the dry run's saved-activation estimate beside the measurement; `infer`: merged-model inference."""
    dev = torch.device(device)
    torch.manual_seed(seed)
    base = spec.build().to(dev, dtype)
    rows: list[Row] = []
    for method in ours:
        rows.append(Row("onelora", method, apply_peft(copy.deepcopy(base, shared_weights(base)), method, seed=seed)))
    for method in compiled:
        model = apply_peft(copy.deepcopy(base, shared_weights(base)), method, seed=seed)
        rows.append(Row("onelora+compile", method, model, compiled=True))
    for method in peers:
        try:
            rows.append(Row("hf_peft", method, hf_peft(copy.deepcopy(base, shared_weights(base)), method)))
        except ImportError:
            log("HF peft is not installed: peers skipped")
            break
    inputs = spec.inputs(dev, dtype)
    clock = StepClock(dev)
    for row in rows:
        row.model.train()
        row.trainable = sum(p.numel() for p in row.model.parameters() if p.requires_grad)
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            # perturb what trains, so zero-initialised adapters compute their real backward
            with torch.no_grad():
                for p in row.model.parameters():
                    if p.requires_grad:
                        p.add_(torch.randn_like(p) * 1e-3)
        if estimate and not row.compiled:  # the dry run's estimate, traced on the meta device (no data, no weights)
            meta_inputs = {k: v.to("meta") for k, v in inputs.items()}
            meta = copy.deepcopy(row.model).to("meta")
            row.est_saved_bytes = saved_activations(meta, meta_inputs, device_type=dev.type)["total"]
        row.state_bytes = state_bytes(row.model)
    optimizers = {id(r): torch.optim.AdamW([p for p in r.model.parameters() if p.requires_grad], lr=1e-6) for r in rows}
    forwards = {
        id(r): torch.compile(r.model, fullgraph=True, backend=compile_backend) if r.compiled else r.model for r in rows
    }

    def forward_backward(r: Row) -> None:
        spec.loss(forwards[id(r)](**inputs)).backward()

    def step(r: Row) -> None:
        forward_backward(r)
        optimizers[id(r)].step()
        optimizers[id(r)].zero_grad(set_to_none=True)

    # The warm-up step (it allocates AdamW's state, and compiles) is the measured one: the ops of its forward and
    # backward, the activations its forward saves, its peak memory. One step less per method at 13B width.
    for r in rows:
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        if r.compiled:  # inductor's kernels are no aten ops, and the meter's hooks would break the graph
            forward_backward(r)
        else:
            with SavedBytes(r.model) as meter:
                r.ops = sum(top_level_ops(lambda r=r: forward_backward(r)).values())
            r.saved_bytes = meter.nbytes
        optimizers[id(r)].step()
        optimizers[id(r)].zero_grad(set_to_none=True)
        if dev.type == "cuda":
            r.peak_mem_bytes = torch.cuda.max_memory_allocated(dev)
    for i in range(repeats):
        order = rows if i % 2 == 0 else rows[::-1]  # interleaved, alternating direction
        for r in order:
            r.step_s.append(clock(lambda r=r: step(r)))
    base_infer = _infer_ms(base, inputs, clock, repeats) if infer else None
    for r in rows:
        if infer and not r.compiled:
            merged = (
                merge_peft(copy.deepcopy(r.model)) if r.impl == "onelora" else copy.deepcopy(r.model).merge_and_unload()
            )
            r.infer_ms = _infer_ms(merged, inputs, clock, repeats)
    bitfit = next(r for r in rows if r.impl == "onelora" and r.method == "bitfit")
    bit_step = statistics.median(bitfit.step_s)
    out = []
    for r in rows:
        step_med = statistics.median(r.step_s)
        est = r.est_saved_bytes
        out.append({
            "model": spec.name, "impl": r.impl, "method": r.method, "device": str(dev), "dtype": str(dtype).split(".")[-1],
            "trainable_params": r.trainable, "step_ms": 1e3 * step_med, "saved_bytes": r.saved_bytes,
            "state_bytes": r.state_bytes, "peak_mem_bytes": r.peak_mem_bytes, "est_saved_bytes": est,
            "est_error": None if est is None else est / max(r.saved_bytes, 1) - 1, "ops": r.ops,
            "ops_above_bitfit": None if r.ops is None else r.ops - bitfit.ops,
            "step_ratio_bitfit": step_med / bit_step,
            "saved_ratio_bitfit": None if r.compiled else r.saved_bytes / max(bitfit.saved_bytes, 1),
            "infer_ms": r.infer_ms,
            "infer_ratio_base": None if r.infer_ms is None else r.infer_ms / base_infer, "repeats": repeats,
        })  # fmt: skip
    return out


@torch.no_grad()
def _infer_ms(model: nn.Module, inputs: dict[str, Tensor], clock: StepClock, repeats: int) -> float:
    model.eval()
    model(**inputs)
    return 1e3 * statistics.median(clock(lambda: model(**inputs)) for _ in range(repeats))


def _num(value: float | None, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    head = ("| impl | method | step [ms] | ×BitFit | ops | +ops | saved act. [MiB] | ×BitFit | dry-run estimate (error) | "
            "state [MiB] | peak [MiB] | merged infer ×base |")  # fmt: skip
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        mib = None if r["peak_mem_bytes"] is None else r["peak_mem_bytes"] / 2**20
        est = (
            "–"
            if r["est_saved_bytes"] is None
            else f"{r['est_saved_bytes'] / 2**20:.1f} ({100 * r['est_error']:+.1f}%)"
        )
        saved = None if r["saved_ratio_bitfit"] is None else r["saved_bytes"] / 2**20
        lines.append(
            f"| {r['impl']} | {r['method']} | {r['step_ms']:.1f} | {r['step_ratio_bitfit']:.3f} | "
            f"{_num(r['ops'], 'd')} | {_num(r['ops_above_bitfit'], '+d')} | {_num(saved, '.1f')} | "
            f"{_num(r['saved_ratio_bitfit'], '.3f')} | {est} | {r['state_bytes'] / 2**20:.1f} | {_num(mib, '.1f')} | "
            f"{_num(r['infer_ratio_base'], '.2f')} |"
        )
    return "\n".join(lines)


def layer_benchmark(shapes: list[tuple[int, int, int]], repeats: int = 31) -> list[dict[str, Any]]:
    """One linear layer, tokens x k -> d: BitFit, the paper's listing in autograd, our two forms, our choice."""
    from ..peft.onelora import OneLoRAFunction, onelora_reference

    def bitfit(x: Tensor, w: Tensor, bias: Tensor, b: Tensor) -> Tensor:
        return torch.nn.functional.linear(x, w, bias)

    variants = {
        "bitfit": (bitfit, True),
        "listing": (onelora_reference, False),
        "additive": (lambda x, w, bias, b: OneLoRAFunction.apply(x, w, bias, b, False), False),
        "merged_weight": (lambda x, w, bias, b: OneLoRAFunction.apply(x, w, bias, b, True), False),
        "onelora_fast": (OneLoRAFunction.apply, False),  # chooses between the two by shape and dtype
    }
    out = []
    for tokens, k, d in shapes:
        x0, w = torch.randn(tokens, k), torch.randn(d, k) * 0.02
        bias, b = torch.zeros(d, requires_grad=True), torch.zeros(d, requires_grad=True)
        times: dict[str, list[float]] = {n: [] for n in variants}
        for _ in range(repeats):
            for name, (fn, with_bias) in variants.items():
                x = x0.clone().requires_grad_(True)
                t0 = time.perf_counter()
                fn(x, w, bias if with_bias else None, b).sum().backward()
                times[name].append(time.perf_counter() - t0)
        ref = statistics.median(times["bitfit"])
        for name, ts in times.items():
            out.append({"tokens": tokens, "k": k, "d": d, "variant": name, "ms": 1e3 * statistics.median(ts),
                        "ratio_bitfit": statistics.median(ts) / ref})  # fmt: skip
    return out


def quantize_4bit(model: nn.Module) -> nn.Module:
    """Every nn.Linear replaced by a bitsandbytes NF4 Linear4bit with the same weights (fp32 compute on CPU)."""
    import bitsandbytes as bnb

    for name, mod in list(model.named_modules()):
        if type(mod) is nn.Linear:
            q = bnb.nn.Linear4bit(mod.in_features, mod.out_features, bias=mod.bias is not None,
                                  compute_dtype=torch.float32, quant_type="nf4")  # fmt: skip
            q.load_state_dict(mod.state_dict())
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, q)
    return model.to("cpu")  # quantizes the weights


def qlora_benchmark(spec: BenchModel, methods: tuple[str, ...] = ("bitfit", "onelora", "lora"), repeats: int = 5,
                    seed: int = 0) -> list[dict[str, Any]]:  # fmt: skip
    """QLoRA-style training on a 4-bit (NF4) stack: step time, saved activations and state, as ratios to LoRA r=1.

    Each method is put on its own freshly quantized copy (the same weights) and trained with AdamW; the adapted
    layers call bitsandbytes' forward and add the method's term (onelora.peft's generic quantized path).
    """
    rows: dict[str, Row] = {}
    inputs = spec.inputs(torch.device("cpu"), torch.float32)
    for method in methods:
        torch.manual_seed(seed)
        options = {"rank": 1} if method == "lora" else {}
        model = apply_peft(quantize_4bit(spec.build()), method, seed=seed, **options)
        row = rows[method] = Row("onelora", method, model.train())
        row.trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(torch.randn_like(p) * 1e-3)
        row.saved_bytes = saved_activation_bytes(lambda m=model: spec.loss(m(**inputs)), model)
        model.zero_grad(set_to_none=True)
        row.state_bytes = state_bytes(model)
    optimizers = {m: torch.optim.AdamW([p for p in r.model.parameters() if p.requires_grad], lr=1e-6)
                  for m, r in rows.items()}  # fmt: skip

    def step(method: str) -> float:
        t0 = time.perf_counter()
        spec.loss(rows[method].model(**inputs)).backward()
        optimizers[method].step()
        optimizers[method].zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    for m in rows:  # warm-up
        step(m)
    for i in range(repeats):
        for m in rows if i % 2 == 0 else list(rows)[::-1]:
            rows[m].step_s.append(step(m))
    lora = rows["lora"]
    lora_step = statistics.median(lora.step_s)
    return [
        {
            "model": f"{spec.name}_nf4",
            "method": m,
            "trainable_params": r.trainable,
            "step_ms": 1e3 * statistics.median(r.step_s),
            "saved_bytes": r.saved_bytes,
            "state_bytes": r.state_bytes,
            "step_ratio_lora": statistics.median(r.step_s) / lora_step,
            "saved_ratio_lora": r.saved_bytes / max(lora.saved_bytes, 1),
            "state_ratio_lora": r.state_bytes / max(lora.state_bytes, 1),
            "repeats": repeats,
        }  # fmt: skip
        for m, r in rows.items()
    ]


def qlora_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| method | trainable | step [ms] | ×LoRA | saved act. [MiB] | ×LoRA | state [MiB] | ×LoRA |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['trainable_params']:,} | {r['step_ms']:.1f} | {r['step_ratio_lora']:.3f} | "
            f"{r['saved_bytes'] / 2**20:.1f} | {r['saved_ratio_lora']:.3f} | {r['state_bytes'] / 2**20:.1f} | "
            f"{r['state_ratio_lora']:.3f} |"
        )
    return "\n".join(lines)
