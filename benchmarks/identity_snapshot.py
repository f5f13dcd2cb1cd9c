"""Run the workflow on the tiny test models (text + vision) and print the sha256 of every CSV.

Used to check that a refactor keeps behaviour: run it before and after, then diff the two
listings. usage: python benchmarks/identity_snapshot.py WORKDIR > listing.txt
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from test_workflow import _config, snakemake  # noqa: E402
from test_workflow_vision import _config as vision_config  # noqa: E402
from tiny_models import build_clip_folder, build_llava_folder, build_model_folder  # noqa: E402

TARGET = "results/stats/effect_sizes.csv"


def listing(work: Path) -> list[str]:
    rows = []
    for path in sorted((work / "results").rglob("*.csv")):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        rows.append(f"{digest}  {path.relative_to(work)}")
    return rows


def main(root: str) -> None:
    root = Path(root)
    models = {
        "tiny-llama": {
            "source": str(build_model_folder("llama", root / "src" / "llama")),
            "per_token_layers": [1],
        },
        "tiny-gemma3": {"source": str(build_model_folder("gemma3", root / "src" / "gemma3"))},
    }
    snakemake(root / "text", _config(models), TARGET)
    clip = build_clip_folder(root / "src" / "clip")
    llava = build_llava_folder(root / "src" / "llava")
    snakemake(root / "vision", vision_config(clip, llava), TARGET)
    for part in ("text", "vision"):
        for row in listing(root / part):
            print(f"{part}: {row}")


if __name__ == "__main__":
    main(sys.argv[1])
