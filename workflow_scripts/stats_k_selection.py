"""k_selection: alignment tables + their bootstrap replicates -> results/stats/k_selection.csv.

k is chosen on the first ``stats.k_select_fraction`` of each layer pair's replicates among the
k with a permuted-label null, and tested against that null (circuitflow.stats.k_selection);
the ``selection`` column says how alignment chose the bootstrapped layer pair (its manifest's
``bootstrap.pairs``).
"""

import pandas as pd

from circuitflow import stats, store
from circuitflow.workflow import run_logged


def layer_selection(boot_path) -> str:
    """The bootstrap's ``alignment.bootstrap_pairs`` (a key of stats.LAYER_SELECTION)."""
    pairs = store.read_manifest(boot_path)["params"].get("bootstrap", {}).get("pairs")
    if pairs not in stats.LAYER_SELECTION:
        raise ValueError(
            f"{boot_path}: manifest params bootstrap.pairs = {pairs!r}, not one of "
            f"{list(stats.LAYER_SELECTION)}; rebuild it with snakemake"
        )
    return pairs


def main(smk):
    s = smk.params.stats
    frames = []
    for table_path, boot_path in zip(smk.input.tables, smk.input.bootstrap, strict=True):
        table = pd.read_csv(table_path)
        boot = pd.read_csv(boot_path)
        pairs = layer_selection(boot_path)
        frames.append(
            stats.k_selection(
                table,
                boot,
                select_fraction=s["k_select_fraction"],
                confidence_level=s["confidence_level"],
                selection=stats.LAYER_SELECTION[pairs],
                pair_chosen=pairs == "best",
            )
        )
        print(f"{boot_path}: {len(boot)} replicate rows")
    out = (
        pd.concat(frames, ignore_index=True)
        if frames
        else stats.k_selection(pd.DataFrame(), pd.DataFrame(), s["k_select_fraction"])
    )
    if len(frames) > 1:  # one BH correction over every selection of every pair
        out = stats.adjust_k_selection(out)
    out.to_csv(smk.output[0], index=False, float_format="%.6g")
    chosen = out[out.selected.astype(bool)]
    print(f"{len(chosen)} selections; {int((chosen.p_fdr_bh < 0.05).sum())} with p_fdr_bh < 0.05")
    store.write_manifest(
        smk.output[0],
        kind="k_selection",
        inputs={"tables": list(smk.input.tables), "bootstrap": list(smk.input.bootstrap)},
        params={
            "confidence_level": s["confidence_level"],
            "k_select_fraction": s["k_select_fraction"],
        },
    )


run_logged(snakemake, main)  # noqa: F821
