"""compare_projectors: every trained VLM's evaluation -> results/projectors/{dataset}/comparison/
(measurements.csv: each pair of architectures paired over test photos, seeds averaged, on
each metric's image gain (own image - mismatched image);
ranking.csv: per architecture, ranked by the image gain, the held-out caption NLL with a
mismatched image minus with its own, which a text prior alone cannot raise; then by NLL)
+ manifest."""

import itertools
from pathlib import Path

import pandas as pd

from circuitflow import store
from circuitflow.workflow import run_logged

# metric -> its evaluation.csv column, or the prefix of its per-attribute columns (averaged)
METRICS = {
    "caption_nll_image_gain": "caption_nll_image_gain",
    "caption_nll": "caption_nll",
    "retrieval_accuracy": "retrieval_",
    "attribute_word_accuracy": "words_",
    "siglip_score": "siglip_score",
    "retrieval_image_gain": "retrieval_image_gain",
    "attribute_word_image_gain": "attribute_word_image_gain",
    "siglip_image_gain": "siglip_image_gain",
}
# the pairwise tests compare only what the image adds (own image - mismatched image): a raw
# NLL or word-accuracy difference between projectors is also made by text priors alone
PAIRWISE = tuple(m for m in METRICS if m.endswith("_image_gain"))


def attribute_columns(table: pd.DataFrame, prefix: str) -> list[str]:
    """The per-attribute columns ``prefix + attribute`` (the attributes are those with a
    ``chance_`` column), so that other columns sharing the prefix never join the mean."""
    attributes = [c.removeprefix("chance_") for c in table.columns if c.startswith("chance_")]
    return [f"{prefix}{a}" for a in attributes if f"{prefix}{a}" in table]


def image_gains(t: pd.DataFrame) -> pd.DataFrame:
    """Per image, each metric with the own image minus with the mismatched one (NLL: the
    mismatched minus the own, so that larger is better everywhere)."""
    t = t.assign(caption_nll_image_gain=t["mismatched_caption_nll"] - t["caption_nll"])
    for prefix, gain in (
        ("retrieval_", "retrieval_image_gain"),
        ("words_", "attribute_word_image_gain"),
    ):
        own = attribute_columns(t, prefix)
        if own:
            t[gain] = t[own].mean(axis=1) - t[[f"mismatched_{c}" for c in own]].mean(axis=1)
    if "siglip_score" in t:
        t["siglip_image_gain"] = t["siglip_score"] - t["mismatched_siglip_score"]
    return t


def per_image(table: pd.DataFrame, prefix: str) -> pd.Series:
    """The column ``prefix``, else the mean of its per-attribute columns."""
    if prefix in table:
        return table[prefix]
    cols = attribute_columns(table, prefix)
    return table[cols].mean(axis=1) if cols else None


def main(smk):
    p = smk.params
    vlms = dict(p.vlms)
    tables = {}
    for path in smk.input.evaluations:
        model = Path(path).name
        t = image_gains(pd.read_csv(Path(path) / "evaluation.csv"))
        tables[model] = t.assign(architecture=vlms[model][0], seed=vlms[model][1])
    values = {}  # (architecture, metric) -> per-photo mean over images and seeds
    by_model = []
    for model, t in tables.items():
        row = {"model": model, "architecture": vlms[model][0], "seed": vlms[model][1]}
        for metric, prefix in METRICS.items():
            v = per_image(t, prefix)
            if v is not None:
                row[metric] = float(t.assign(v=v).groupby("source")["v"].mean().mean())
        by_model.append(row)
    all_rows = pd.concat(tables.values(), ignore_index=True)
    for metric, prefix in METRICS.items():
        v = per_image(all_rows, prefix)
        if v is None:
            continue
        photo = all_rows.assign(v=v).groupby(["architecture", "source"])["v"].mean()
        for arch in photo.index.get_level_values(0).unique():
            values[arch, metric] = photo.loc[arch]
    archs = sorted({a for a, _ in values})
    frames = []
    for a, b in itertools.combinations(archs, 2):
        for metric in PAIRWISE:
            if (a, metric) not in values:
                continue
            for arm, arch in (("treatment", a), ("baseline", b)):
                s = values[arch, metric]
                frames.append(
                    pd.DataFrame(
                        {
                            "phase": "projectors",
                            "dataset": p.dataset,
                            "model": "projector_study",
                            "layer": "",
                            "site": "projector.hook_out",
                            "position": "image_tokens",
                            "condition": "all",
                            "setting": f"a={a} b={b}",
                            "metric": metric,
                            "arm": arm,
                            "unit": s.index,
                            "value": s.to_numpy(),
                            "unit_kind": "photo",
                        }
                    )
                )
    out = Path(smk.output[0])
    out.mkdir(parents=True, exist_ok=True)
    columns = [*store.MEASUREMENT_COLUMNS, "unit_kind"]
    m = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    m.to_csv(out / store.MEASUREMENTS_FILE, index=False, float_format="%.6g")
    models = pd.DataFrame(by_model)
    models = models.assign(_gain=-models["caption_nll_image_gain"])
    models = models.sort_values(["_gain", "caption_nll", "model"]).drop(columns="_gain")
    models.to_csv(out / "models.csv", index=False, float_format="%.6g")
    ranking = (
        models.groupby("architecture", sort=True)
        .mean(numeric_only=True)
        .drop(columns="seed")
        .reset_index()
    )
    ranking = ranking.assign(_gain=-ranking["caption_nll_image_gain"])
    ranking = ranking.sort_values(["_gain", "caption_nll", "architecture"]).drop(columns="_gain")
    ranking.insert(0, "rank", range(1, len(ranking) + 1))
    ranking.to_csv(out / "ranking.csv", index=False, float_format="%.6g")
    best = models.iloc[0]["model"]
    (out / "best.txt").write_text(best + "\n")
    print(ranking.to_string(index=False))
    print(f"best VLM (largest image gain in held-out caption NLL): {best}")
    store.write_manifest(
        out,
        kind="projector_comparison",
        inputs={"evaluations": list(smk.input.evaluations)},
        params={"dataset": p.dataset, "vlms": {k: list(v) for k, v in vlms.items()}},
        extra={"best": best, "n_architectures": len(archs)},
    )


run_logged(snakemake, main)  # noqa: F821
