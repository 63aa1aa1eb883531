"""Greedy answers to MetaMathQA validation questions from a math run's checkpoint, scored by exact match.

    python scripts/math_answers.py RUN_DIR [--n 20] [--max-new-tokens 256] [--batch-size 8]

The paper's Appendix C shows such answers (LLaMA-2 13B, 1LoRA vs LoRA (QKV)); beyond the paper's
validation loss, this scores the final answer ("The answer is: X") against the reference's.
RUN_DIR holds the run's composed config (`config.yaml`, or Hydra's `.hydra/config.yaml`; or --config)
and `checkpoints/last.ckpt` (Lightning checkpoint of what trains; a DeepSpeed checkpoint folder works
too). The model is rebuilt as the run built it (`build_peft_model`, same seed, the task's dtypes), the
checkpoint loaded over it, and the first N questions of the same validation split answered greedily.
Writes RUN_DIR/answers.jsonl (one line per question) and RUN_DIR/answers.json (the score); prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("ONELORA_ROOT", str(ROOT))

ANSWER = re.compile(r"The answer is:?\s*(.*)", re.IGNORECASE)


def extract_answer(text: str) -> str | None:
    """The text after the last "The answer is:" (its line), or None."""
    found = list(ANSWER.finditer(text))
    if not found:
        return None
    return found[-1].group(1).strip().split("\n")[0].strip()


def normalize(answer: str | None) -> str | None:
    """Compare answers modulo `$`, thousands separators, a trailing period and numeric form (5.0 == 5)."""
    if answer is None:
        return None
    a = answer.strip().rstrip(".").replace("$", "").replace(" ", "")
    a = re.sub(r"(?<=\d),(?=\d{3})", "", a)
    try:
        x = float(a)
        return str(int(x)) if x.is_integer() else repr(x)
    except ValueError:
        return a


def generate(model: Any, tokenizer: Any, questions: list[str], max_new_tokens: int, batch_size: int) -> list[str]:
    import torch

    from onelora.data.metamath import format_prompt

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    model.config.use_cache = True
    tokenizer.padding_side = "left"  # generation continues every row from its last prompt token
    out: list[str] = []
    for i in range(0, len(questions), batch_size):
        prompts = [format_prompt(q) for q in questions[i : i + batch_size]]
        enc = tokenizer(prompts, return_tensors="pt", padding=True).to(device)
        limit = getattr(model.config, "max_position_embeddings", None)  # past it transformers warns on screen
        room = max_new_tokens if not limit else max(1, min(max_new_tokens, limit - enc["input_ids"].shape[1]))
        with torch.no_grad():
            ids = model.generate(
                **enc,
                max_new_tokens=room,
                do_sample=False,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        out += tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--n", type=int, default=20, help="validation questions to answer (the split's first N)")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--config", type=Path, default=None, help="the run's composed config (default: in RUN_DIR)")
    ap.add_argument("--ckpt", type=Path, default=None, help="default: RUN_DIR/checkpoints/last.ckpt")
    args = ap.parse_args(argv)

    from hydra.utils import instantiate

    from onelora.data.metamath import _valid
    from onelora.run.checkpoints import RunError, load_run, load_run_config
    from onelora.run.logs import quiet_dependencies

    quiet_dependencies()  # no transformers loading bar between the script's lines

    run_dir = args.run_dir.resolve()
    ckpt = args.ckpt or run_dir / "checkpoints" / "last.ckpt"
    try:
        task = load_run_config(run_dir, args.config).task.name
        if task != "math":  # checked before the model loads
            raise RunError(f"{run_dir} is a {task} run; math_answers.py answers the questions of a math run")
        cfg, model, _ = load_run(run_dir, ckpt, args.config)
    except RunError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    dm = instantiate(cfg.data.module)
    tokenizer = dm.load_tokenizer()
    _, val = dm.split_records()
    val = [r for r in val if _valid(r)][: args.n]
    answers = generate(model, tokenizer, [r["query"] for r in val], args.max_new_tokens, args.batch_size)
    rows, correct = [], 0
    for r, text in zip(val, answers):
        pred, ref = normalize(extract_answer(text)), normalize(extract_answer(r["response"]))
        ok = pred is not None and pred == ref
        correct += ok
        rows.append({"question": r["query"], "generated": text, "predicted": pred, "reference": ref, "correct": ok})
    with open(run_dir / "answers.jsonl", "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    summary = {
        "n": len(rows),
        "correct": correct,
        "exact_match": correct / len(rows) if rows else None,
        "checkpoint": str(ckpt),
        "max_new_tokens": args.max_new_tokens,
        "peft": cfg.peft.name,
        "model": cfg.model.name,
    }
    (run_dir / "answers.json").write_text(json.dumps(summary, indent=1))
    print(
        f"{cfg.model.name} {cfg.peft.name}: exact_match={summary['exact_match']} ({correct}/{len(rows)}) -> {run_dir / 'answers.jsonl'}"
    )
    return summary


if __name__ == "__main__":
    main()
