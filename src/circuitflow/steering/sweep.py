"""The text steering job: directions and norms from the stores, the sweep, evaluator scores.

Inputs are the vectors store (unit directions and PCA components per hook, position and
condition) and the activation store (residual norms for relative alphas); the output is one
row per (prompt, configuration) for ``samples.csv``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from os import PathLike

import numpy as np
import pandas as pd
from jaxtyping import Float

from circuitflow import store
from circuitflow.core.layers import resolve_layers
from circuitflow.evaluators import Item, build_evaluators, score_all
from circuitflow.steering.text import (
    UNSTEERED,
    Generation,
    SteeringError,
    SteeringParams,
    build_configs,
    encode_prompts,
    run_sweep,
    select_prompts,
)
from circuitflow.store import as_measurements


def mean_residual_norm(
    acts: Float[np.ndarray, "sample position d_model"], train: np.ndarray
) -> float:
    """Mean over train samples of ||resid|| at position ``mean`` (the token-mean residual).

    acts: an activation-store array, positions ``store.POSITIONS``.
    """
    a = np.asarray(acts, dtype=np.float64)[train, store.POSITIONS.index("mean")]
    if len(a) == 0:
        raise ValueError("no train samples to compute the mean residual norm from")
    return float(np.linalg.norm(a, axis=-1).mean())


def sample_rows(generations: Sequence[Generation], dataset: str, model: str) -> list[dict]:
    """Per-sample rows (without evaluator scores) for ``samples.csv``."""
    return [
        {
            "dataset": dataset,
            "model": model,
            "prompt_id": g.prompt.prompt_id,
            **g.config.describe(),
            "prompt": g.prompt.text,
            "generation": g.text,
            "n_tokens": len(g.tokens),
        }
        for g in generations
    ]


def load_directions(
    vectors_path: str | PathLike,
    activations_path: str | PathLike,
    layers: Sequence[int],
    conditions: Sequence[str],
    position: str,
    components: Sequence[int] = (),
) -> tuple[
    dict[int, dict[str, Float[np.ndarray, " d_model"]]],
    dict[int, dict[str, Float[np.ndarray, "k d_model"]]],
    dict[int, float],
]:
    """Steering inputs for ``layers`` from the vectors and activation stores.

    Returns ({layer: {condition: unit direction}}, {layer: {condition: components}}, {layer:
    mean residual norm}), all at ``blocks.{L}.hook_resid_pre``; the directions and components
    at ``position``, the norm at position ``mean`` (train split).
    """
    vec = store.open_dataset(vectors_path)
    have_hooks = {str(h) for h in vec["hook"].values}
    have_conditions = [str(c) for c in vec["condition"].values]
    missing = [c for c in conditions if c not in have_conditions]
    if missing:
        raise SteeringError(
            f"steering.conditions: {missing} not in {vectors_path} (has {have_conditions})"
        )
    coords = store.read_sample_coords(activations_path)
    train = coords["split"] == "train"
    directions, subspaces, norms = {}, {}, {}
    for layer in layers:
        hook = store.hook_name(layer, "hook_resid_pre")
        if hook not in have_hooks:
            raise SteeringError(
                f"{vectors_path}: no {hook}; include layer {layer} in extract.layers and "
                "extract.sites (hook_resid_pre) or steer other layers"
            )
        sel = vec.sel(hook=hook, position=position)
        directions[layer] = {c: sel["direction"].sel(condition=c).values for c in conditions}
        if components:
            subspaces[layer] = {c: sel["subspace"].sel(condition=c).values for c in conditions}
        norms[layer] = mean_residual_norm(store.read_array(activations_path, hook), train)
    return directions, subspaces, norms


def sweep_table(
    bridge,
    rows: Sequence[Mapping],
    params: SteeringParams,
    *,
    dataset: str,
    model: str,
    labels: Sequence[str],
    baseline: str,
    vectors_path: str | PathLike,
    activations_path: str | PathLike,
    prepend_bos: bool = True,
    base_seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
) -> tuple[pd.DataFrame, dict]:
    """The steering job: sweep, generate, score -> (per-sample DataFrame, summary dict)."""
    layers = list(resolve_layers(params.layers, bridge.cfg.n_layers, "steering.layers", model))
    conditions = list(params.conditions or [c for c in labels if c != baseline])
    directions, subspaces, norms = load_directions(
        vectors_path, activations_path, layers, conditions, params.position, params.components
    )
    configs = build_configs(
        params, layers, directions, subspaces, norms, bridge.cfg.d_model, base_seed
    )
    chosen = select_prompts(rows, baseline, params.n_prompts)
    prompts = encode_prompts(bridge.tokenizer, chosen, params.prompt_template, prepend_bos)
    t0 = time.perf_counter()
    gens = run_sweep(
        bridge,
        prompts,
        configs,
        params.max_new_tokens,
        params.window,
        params.batch_size,
        bos=prepend_bos,
        progress=progress,
    )
    t1 = time.perf_counter()
    evaluators = build_evaluators(
        params.evaluators,
        bridge=bridge,
        hub_classifiers=params.hub_classifiers,
        batch_size=params.batch_size,
        device=device,
    )
    scores = score_all(evaluators, [Item(g.text, g.prompt.ids, g.tokens) for g in gens])
    t2 = time.perf_counter()
    table = pd.DataFrame(sample_rows(gens, dataset, model))
    for col in ("layer", "seed"):
        table[col] = table[col].astype("Int64")
    for col, values in scores.items():
        table[col] = values
    summary = {
        "layers": layers,
        "resid_norms": {str(k): v for k, v in norms.items()},
        "n_prompts": len(prompts),
        "n_configs": len(configs),
        "n_rows": len(table),
        "generate_s": round(t1 - t0, 2),
        "evaluate_s": round(t2 - t1, 2),
        "evaluators": [e.name for e in evaluators],
        "score_columns": list(scores),
    }
    return table, summary


def sample_measurements(samples: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """samples.csv -> ``measurements.csv`` rows per prompt (unit): treatment = one steering
    configuration (layer x alpha x direction), baseline = the unsteered generation of the
    same prompt, control = the random directions (``control`` rows) at the same layer and
    alpha, seeds averaged per prompt. ``marker_target`` is the marker column of the
    direction's emotion (``marker_<condition>``); metrics missing from the table are skipped."""
    s = samples
    control = s["control"].astype(str).str.lower() == "true"
    base = s[s["direction"] == UNSTEERED]
    steered = s[(s["direction"] != UNSTEERED) & ~control]
    randoms = s[control]
    frames = []
    for (layer, alpha, mode, direction), part in steered.groupby(
        ["layer", "alpha", "alpha_mode", "direction"], sort=True
    ):
        condition = str(part["condition"].iloc[0])
        ctrl = randoms[
            (randoms["layer"] == layer)
            & (randoms["alpha"] == alpha)
            & (randoms["alpha_mode"] == mode)
        ]
        setting = f"direction={direction} alpha={alpha:g} mode={mode}"
        for metric in metrics:
            column = f"marker_{condition}" if metric == "marker_target" else metric
            if column not in s:
                continue
            for arm, rows in (("treatment", part), ("baseline", base), ("control", ctrl)):
                rows = rows[np.isfinite(rows[column].astype(float))]
                frames.append(
                    as_measurements(
                        pd.DataFrame(
                            {
                                "arm": arm,
                                "unit": rows["prompt_id"].astype(str).to_numpy(),
                                "value": rows[column].astype(float).to_numpy(),
                            }
                        ),
                        phase="steering",
                        dataset=str(s["dataset"].iloc[0]),
                        model=str(s["model"].iloc[0]),
                        layer=int(layer),
                        site="hook_resid_pre",
                        position="window+generated",
                        condition=condition,
                        setting=setting,
                        metric=metric,
                    )
                )
    if not frames:
        return as_measurements(pd.DataFrame())
    return pd.concat(frames, ignore_index=True)
