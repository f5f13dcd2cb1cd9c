"""patch_model: frames + model + vectors + activations -> results/patching/{dataset}/{model}/.

residual.csv, heads.csv, heads_ranking.csv, directional_ablation.csv (per-sample rows),
ablation_controls.csv (variance each ablated basis carries over the train tokens),
measurements.csv (the same, per unit, for effect_sizes), metric_tokens.json and
manifest.json (kind "patching", key figures under "summary").
"""

import json
import os
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning: on a machine shared with other jobs, spinning
# threads made these small-batch forwards 2-10x slower (measured on 2 cores). Must be set
# before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pandas as pd

from circuitflow import devices, models, patching, store
from circuitflow.core.layers import resolve_layers
from circuitflow.workflow import run_logged


def probe_inputs(path, conditions, baseline, n_layers, position):
    """Train-split final-layer features (activation store) per condition vs baseline."""
    hook = store.hook_name(n_layers - 1, "hook_resid_post")
    coords = store.read_sample_coords(path)
    X = store.read_array(path, hook)[:, store.store_positions(path).index(position)]
    out = {}
    for c in conditions:
        keep = (coords["split"] == "train") & np.isin(coords["label"], [c, baseline])
        out[c] = (X[keep], (coords["label"][keep] == c).astype(int))
    return out, X, coords


def main(smk):
    p = smk.params
    out = Path(smk.output[0])
    rows = store.read_samples(smk.input.dataset)
    cfg = patching.PatchConfig.from_params(p.patching, p.seed)
    bridge = models.load_bridge(smk.input.model, dtype=p.dtype, device=devices.job_device(p.device))
    L = bridge.cfg.n_layers
    conditions = [label for label in p.labels if label != p.baseline]
    abl_layers = resolve_layers(cfg.ablation_layers, L, "patching.ablation_layers", p.model)
    directions, subspaces = patching.read_vectors(
        smk.input.vectors,
        conditions,
        abl_layers,
        cfg.direction_position,
        cfg.subspace_k,
        cfg.direction_contrast,
    )
    probe_data, store_feats, coords = probe_inputs(
        smk.input.activations, conditions, p.baseline, L, cfg.probe_position
    )
    screen = atp = None
    if "screen" in smk.input.keys():
        screen_dir = Path(smk.input.screen)
        problems = store.verify(screen_dir)
        if problems:
            raise ValueError(
                f"{problems[0]}: the AtP screen does not match its manifest; rerun snakemake"
            )
        screen = pd.read_csv(screen_dir / patching.SCREEN_FILE)
        atp = pd.read_csv(screen_dir / patching.ATTRIBUTION_FILE)
    result = patching.run_text_patching(
        bridge,
        rows,
        cfg,
        p.labels,
        p.baseline,
        directions,
        subspaces,
        probe_data,
        prepend_bos=p.prepend_bos,
        model_name=p.model,
        screen_table=screen,
        atp=atp,
    )
    info = result["info"]
    # our unablated final-layer features against the activation store (float16 there)
    samples, feats = result["base_features"]
    index = {s: i for i, s in enumerate(coords["sample"].tolist())}
    ref = store_feats[[index[r["sample_id"]] for r in samples]]
    info["probe_feature_max_rel_diff"] = float(
        np.abs(feats - ref).max() / max(np.abs(ref).max(), 1e-12)
    )
    out.mkdir(parents=True, exist_ok=True)
    for name in ("residual", "heads", "heads_ranking", "directional_ablation", "ablation_controls"):
        table = result[name]
        table.insert(0, "model", p.model)
        table.insert(0, "dataset", p.dataset)
        table.to_csv(out / f"{name}.csv", index=False)
    for name, table in result["validation"].items():  # the exact full grid and its agreement
        table.insert(0, "model", p.model)
        table.insert(0, "dataset", p.dataset)
        file = "agreement.csv" if name == "agreement" else f"validation_{name}.csv"
        table.to_csv(out / file, index=False, float_format="%.6g")
    # the statistics phase's input, from the tables as written
    tables = {
        name: pd.read_csv(out / f"{name}.csv", float_precision="round_trip")
        for name in ("residual", "heads", "directional_ablation")
    }
    patching.text_measurements(
        tables["residual"], tables["heads"], tables["directional_ablation"]
    ).to_csv(out / store.MEASUREMENTS_FILE, index=False)
    metric = result["metric"].to_json(p.model, cfg.metric_words)
    (out / "metric_tokens.json").write_text(json.dumps(metric, indent=2) + "\n")
    summary = patching.summarize(
        result["residual"],
        result["heads"],
        result["heads_ranking"],
        result["directional_ablation"],
        result["ablation_controls"],
    )
    print(json.dumps({"info": info, "summary": summary}, indent=1, default=str))
    store.write_manifest(
        out,
        kind="patching",
        inputs={
            "dataset": smk.input.dataset,
            "model": smk.input.model,
            "vectors": smk.input.vectors,
            "activations": smk.input.activations,
            **({"screen": smk.input.screen} if screen is not None else {}),
        },
        params=patching.manifest_params(p),
        seeds={"seed": p.seed},
        extra={"run": info, "summary": summary},
    )


run_logged(snakemake, main)  # noqa: F821
