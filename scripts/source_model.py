"""Re-make the quickstart's source model: the digits ViT pre-trained on digits 0-4 (experiment=quickstart_pretrain).

    python scripts/source_model.py                       # -> .cache/vit_digits_0-4 (paths.cache_dir), compared
    python scripts/source_model.py --update-reference    # ... and made the committed one (make source-model UPDATE=1)

The recipe is pinned (seed 0, one thread: configs/experiment/quickstart_pretrain.yaml), so on one machine it
always gives the same file; another CPU or torch build can change its last bits. The script prints the model's
accuracy on digits 0-4 and its SHA-256 beside the committed one (src/onelora/assets/vit_digits_0-4, pinned by
model.sha256 in configs/model/vit_digits.yaml). --update-reference copies it there and writes the new checksum;
commit both. To fine-tune a re-made model without committing it: model.pretrained=<its folder> model.sha256=null.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("ONELORA_ROOT", str(ROOT))
CONFIG = ROOT / "configs" / "model" / "vit_digits.yaml"
FILES = ("config.json", "model.safetensors")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="where to write it (default: <paths.cache_dir>/vit_digits_0-4)")
    ap.add_argument("--update-reference", action="store_true", help="make it the committed source model")
    args = ap.parse_args(argv)

    from hydra import compose, initialize_config_dir

    from onelora.assets import ROOT as ASSETS
    from onelora.assets import sha256
    from onelora.errors import user_errors
    from onelora.run.logs import quiet_dependencies
    from onelora.run.train import make_pretrained

    quiet_dependencies()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["task=quickstart"])
        out = args.out or Path(cfg.paths.cache_dir) / "vit_digits_0-4"
        try:
            record = make_pretrained(cfg.model.pretrain_experiment, out, cfg)
        except user_errors() as e:
            print(f"source_model: {e}", file=sys.stderr)
            return 2
    digest, committed = sha256(out / "model.safetensors"), cfg.model.get("sha256")
    same = "the committed model" if digest == committed else f"differs from the committed model ({committed})"
    print(f"{out}: accuracy on digits 0-4 {100 * record['metric_best']:.2f}%, SHA-256 {digest}: {same}")
    if not args.update_reference and digest != committed:
        print(f"to fine-tune it: python run.py model.pretrained={out} model.sha256={digest}")
    if args.update_reference and digest != committed:
        target = ASSETS / "vit_digits_0-4"
        target.mkdir(parents=True, exist_ok=True)
        for name in FILES:
            shutil.copyfile(out / name, target / name)
        text = re.sub(r"^sha256: \S+", f"sha256: {digest}", CONFIG.read_text(), count=1, flags=re.M)
        CONFIG.write_text(text)
        print(f"copied to {target} and wrote its SHA-256 into {CONFIG.relative_to(ROOT)}; commit both")
    return 0


if __name__ == "__main__":
    sys.exit(main())
