"""The paper's Figure 11: distribution of the per-sample validation error and calibration (reliability, ECE).

Reads `predictions.pt` (written by the classification task: each validation sample's top-1 confidence,
correctness and cross-entropy) next to `result.json` in run directories, groups runs by method, and draws
a histogram of log10 cross-entropy and a reliability diagram per method.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> float:
    """Σ_b (n_b / N) |accuracy_b − confidence_b| over equal-width confidence bins (b = (i/n, (i+1)/n])."""
    bins = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            ece += sel.mean() * abs(correct[sel].mean() - confidence[sel].mean())
    return float(ece)


def load_predictions(run_dirs: list[Path], duplicates: list[Path] | None = None) -> dict[str, dict[str, np.ndarray]]:
    """{method: {confidence, correct, loss}} pooled over the seeds of each method found under `run_dirs`.

    A run found twice (the same method, seed and predictions: a single run's folder beside the multirun's
    identical one, or a copy) counts once; the folders left out are appended to `duplicates`."""
    pooled: dict[str, dict[str, list[np.ndarray]]] = {}
    seen: set[tuple[str, object, str]] = set()
    for root in run_dirs:
        for pred in sorted(Path(root).rglob("predictions.pt")):
            record = pred.with_name("result.json")
            if not record.is_file():
                continue
            meta = json.loads(record.read_text())
            method = meta.get("peft", "?")
            data = torch.load(pred, weights_only=True)
            arrays = {key: data[key].numpy() for key in ("confidence", "correct", "loss")}
            digest = hashlib.sha256(b"".join(np.ascontiguousarray(a).tobytes() for a in arrays.values())).hexdigest()
            if (method, meta.get("seed"), digest) in seen:
                if duplicates is not None:
                    duplicates.append(pred.parent)
                continue
            seen.add((method, meta.get("seed"), digest))
            for key, a in arrays.items():
                pooled.setdefault(method, {}).setdefault(key, []).append(a)
    return {m: {k: np.concatenate(v) for k, v in d.items()} for m, d in pooled.items()}


def calibration_figure(preds: dict[str, dict[str, np.ndarray]], n_bins: int = 15):  # -> matplotlib Figure
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plots import method_color, method_label

    fig, (ax_err, ax_rel) = plt.subplots(1, 2, figsize=(10, 4))
    edges = np.linspace(0, 1, n_bins + 1)
    for method, d in preds.items():
        color, name = method_color(method), method_label(method)
        log_err = np.log10(np.maximum(d["loss"], 1e-12))
        ax_err.hist(log_err, bins=40, histtype="step", density=True, color=color, label=name)
        bins = np.clip(np.ceil(d["confidence"] * n_bins).astype(int) - 1, 0, n_bins - 1)
        acc = [d["correct"][bins == b].mean() if (bins == b).any() else np.nan for b in range(n_bins)]
        ece = expected_calibration_error(d["confidence"], d["correct"], n_bins)
        ax_rel.plot((edges[:-1] + edges[1:]) / 2, acc, "o-", color=color, label=f"{name} (ECE {100 * ece:.2f}%)")
    ax_err.set(xlabel="log10 validation cross-entropy per sample", ylabel="density")
    ax_rel.plot([0, 1], [0, 1], "k--", lw=1)
    ax_rel.set(xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
    for ax in (ax_err, ax_rel):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
