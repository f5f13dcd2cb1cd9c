"""select_projector: the comparison's best VLM (largest image gain in held-out caption NLL) ->
resources/models/{model}/, a copy of its folder + selection.json + manifest."""

import json
import shutil
from pathlib import Path

from circuitflow import store
from circuitflow.workflow import run_logged


def main(smk):
    comparison = Path(smk.input.comparison)
    best = (comparison / "best.txt").read_text().strip()
    source = next((Path(v) for v in smk.input.vlms if Path(v).name == best), None)
    if source is None:
        raise ValueError(f"{comparison}/best.txt names {best!r}, which is not a trained VLM")
    problems = store.verify(source)
    if problems:
        raise ValueError(
            f"{source}: manifest does not verify ({problems[0]}); rerun train_projector"
        )
    out = Path(smk.output[0])
    shutil.copytree(source, out, ignore=shutil.ignore_patterns(store.MANIFEST, ".snakemake*"))
    by = "largest image gain (mismatched - own held-out caption NLL)"
    selection = json.dumps({"selected": best, "by": by}, indent=2)
    (out / "selection.json").write_text(selection + "\n")
    print(f"{smk.params.model}: {best}")
    store.write_manifest(
        out,
        kind="model",
        inputs={"comparison": str(comparison), "selected": str(source)},
        params={"model": smk.params.model, "selected": best},
        extra={"family": "vlm", "backend": "assembled", "selected": best},
    )


run_logged(snakemake, main)  # noqa: F821
