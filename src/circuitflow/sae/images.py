"""SAEs on image tokens: a vision model's per-token activations at one hook, features chosen on
train photos and tested on test photos, with units = source photos.

Tokens x [n_tokens, d_in] are the hook's spatial tokens (CNN grid, ViT patches, a VLM's
projector tokens or LM image tokens; :class:`circuitflow.models.Capture`, which stops the
forward pass at the hook) over every image of the dataset; ``sample_index`` [n_tokens] indexes
the dataset rows. An image's value of a feature is its max over the image's tokens (as a
prompt's is over its tokens). The conditions are the labels of graded attributes
(``store.GRADED_ATTRIBUTES``, e.g. ``exposure_high``), each against the baseline (the
unchanged photo). AUROCs rank photo-centred values (each image minus its photo's baseline
mean, ``core.ridge.source_contrast``), so a photo's content does not count as an attribute.
The test compares, per test photo, the mean over its condition variants with the mean over its
originals (paired by photo). The null is the same SAE with the same choice and test on labels
permuted within each photo (the SAE never sees labels, so only the choice and test change).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from jaxtyping import Float, Int

from circuitflow import store
from circuitflow.core.ridge import source_contrast
from circuitflow.sae.base import SAEError
from circuitflow.sae.metrics import (
    feature_arms,
    hook_layer_site,
    label_aurocs,
    sae_measurements,
    select_features,
)

IMAGE_METRIC = "feature_max_activation"
NULL_METRIC = "feature_max_activation_permuted_labels"
TOP_IMAGES = 3  # top activating test images per feature in the feature table


@dataclass
class ImageTokens:
    """One hook's tokens over a dataset's images; row i of the dataset is sample i."""

    hook: str
    x: Float[np.ndarray, "n_tokens d_in"]
    sample_index: Int[np.ndarray, " n_tokens"]
    position: Int[np.ndarray, " n_tokens"]  # token index within its image (row-major grid)
    grid: tuple[int, int]


def capture_tokens(vm, rows: Sequence[dict], images, hook: str, batch_size: int = 16):
    """The tokens of ``hook`` for every row (``images[row["image_index"]]``), float32."""
    import torch

    from circuitflow.models import Capture, take_images

    if hook not in vm.hook_names():
        raise SAEError(
            f"config key sae.images.hooks: model {vm.name!r} has no hook {hook!r}; it has "
            f"{', '.join(vm.hook_names())}; name one of them in sae.images.hooks.{vm.name}"
        )
    param = next(vm.module.parameters())
    cap = Capture(vm, [], [hook])
    order = np.asarray([r["image_index"] for r in rows])
    pieces = []
    with torch.no_grad():
        for b0 in range(0, len(order), batch_size):
            pixels = vm.preprocess(take_images(images, order[b0 : b0 + batch_size]))
            pieces.append(cap.run(pixels.to(param.device, param.dtype))[1][hook])
    tokens = np.concatenate(pieces).astype(np.float32)  # [sample, token, d]
    n, n_tok, d = tokens.shape
    if not np.isfinite(tokens).all():
        raise SAEError(f"model {vm.name!r}: NaN/inf activations at {hook}; use dtype float32")
    return ImageTokens(
        hook=hook,
        x=tokens.reshape(n * n_tok, d),
        sample_index=np.repeat(np.arange(n), n_tok),
        position=np.tile(np.arange(n_tok), n),
        grid=tuple(cap.shapes[hook][1]),
    )


def graded_conditions(rows: Sequence[dict], labels: Sequence[str], baseline: str) -> dict:
    """{label: attribute} of the labels whose images edit a graded attribute, in label order."""
    attribute = {r["label"]: r.get("attribute", "") for r in rows}
    return {
        label: attribute[label]
        for label in labels
        if label != baseline and attribute.get(label) in store.GRADED_ATTRIBUTES
    }


def permute_within(labels: np.ndarray, groups: np.ndarray, seed: int) -> np.ndarray:
    """``labels`` shuffled among the samples of each group (seeded)."""
    rng = np.random.default_rng(seed)
    out = np.asarray(labels).copy()
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        out[idx] = out[rng.permutation(idx)]
    return out


@dataclass(frozen=True)
class FeatureTests:
    """The choice on train photos and what the test photos say of every feature.

    ``selected``: (condition, feature, rank, auroc_select) from :func:`select_features`;
    ``aurocs_train`` / ``aurocs_test``: {condition: [d_sae]} on photo-centred values."""

    labels: np.ndarray  # [n_samples] the labels used (true or permuted)
    selected: pd.DataFrame
    n_live: int
    aurocs_train: dict
    aurocs_test: dict


def feature_tests(
    smax: Float[np.ndarray, "n_samples d_sae"],
    labels: Sequence[str],
    frames: Sequence[str],
    splits: Sequence[str],
    conditions: Sequence[str],
    baseline: str,
    top_n: int,
) -> FeatureTests:
    """Choose the ``top_n`` features of each condition on the train samples (|AUROC - 0.5| of
    photo-centred per-image max, among live features) and score every feature on the test
    samples."""
    labels, frames, splits = (np.asarray(a) for a in (labels, frames, splits))
    scores = source_contrast(smax, frames, labels, baseline)
    tr, te = splits == "train", splits == "test"
    conditions = list(conditions)
    selected, n_live = select_features(
        smax[tr], labels[tr], conditions, baseline, top_n=top_n, scores=scores[tr]
    )
    return FeatureTests(
        labels=labels,
        selected=selected,
        n_live=n_live,
        aurocs_train=label_aurocs(scores[tr], labels[tr], conditions, baseline),
        aurocs_test=label_aurocs(scores[te], labels[te], conditions, baseline),
    )


def photo_measurements(
    tests: FeatureTests,
    smax: Float[np.ndarray, "n_samples d_sae"],
    frames: Sequence[str],
    splits: Sequence[str],
    baseline: str,
    metrics: Mapping,
    null_seed: int | None = None,
) -> pd.DataFrame:
    """``measurements.csv`` rows of the chosen features on the test photos: each test image's
    max activation, arm treatment (the condition's variants) or baseline (the originals), unit
    = its source photo (the engine averages a photo's images, then pairs photos). Every live
    (feature, condition) of the choice counts in the family (``n_family_part``). With
    ``null_seed`` the rows are the permuted-label null's (metric :data:`NULL_METRIC`)."""
    frames, te = np.asarray(frames).astype(str), np.asarray(splits) == "test"
    labels = tests.labels
    hook, arch = metrics["hook"], metrics["architecture"]
    layer, site = hook_layer_site(hook)
    suffix = "" if null_seed is None else f" labels=permuted{null_seed}"
    frame = feature_arms(tests.selected, labels, frames, smax, baseline, arch, te, suffix)
    part = f"{hook}/{arch}" if null_seed is None else f"{hook}/{arch}/permuted{null_seed}"
    return sae_measurements(
        frame,
        metrics,
        layer=layer,
        site=site,
        position="token_max",
        metric=IMAGE_METRIC if null_seed is None else NULL_METRIC,
        unit_kind="photo",
        note="" if null_seed is None else "null: labels permuted within each photo",
        family_part=part,
        n_family_part=tests.n_live,
    )


def image_feature_table(
    tests: FeatureTests,
    smax: Float[np.ndarray, "n_samples d_sae"],
    conditions: Mapping[str, str],
    sample_ids: Sequence[str],
    frames: Sequence[str],
    splits: Sequence[str],
    fire_rate: np.ndarray,
    top_n: int = TOP_IMAGES,
) -> pd.DataFrame:
    """Tidy feature x condition table: the attribute, test-split counts (images, photos), mean
    max activation, ``auroc_vs_baseline`` (test photos, photo-centred), ``auroc_train`` (what
    the choice saw), ``selected``, the fraction of the condition's test images where the
    feature fires, its token fire rate (test tokens), and the ``top_n`` test images."""
    ids, frames = np.asarray(sample_ids).astype(str), np.asarray(frames).astype(str)
    te = np.asarray(splits) == "test"
    labels, d_sae = tests.labels, smax.shape[1]
    test_idx = np.flatnonzero(te)
    top = test_idx[np.argsort(-smax[te], axis=0, kind="stable")[:top_n]]  # [top_n, d_sae]
    tops = {}
    for r in range(len(top)):
        tops[f"top{r + 1}_sample_id"] = ids[top[r]]
        tops[f"top{r + 1}_label"] = labels[top[r]]
        tops[f"top{r + 1}_activation"] = smax[top[r], np.arange(d_sae)]
    picked = set(zip(tests.selected["condition"], tests.selected["feature"], strict=True))
    tables = []
    for label, attribute in conditions.items():
        sel = te & (labels == label)
        tables.append(
            pd.DataFrame(
                {
                    "feature": np.arange(d_sae),
                    "label": label,
                    "attribute": attribute,
                    "n_images": int(sel.sum()),
                    "n_photos": len(set(frames[sel])),
                    "mean_max_activation": smax[sel].mean(0) if sel.any() else np.nan,
                    "auroc_vs_baseline": tests.aurocs_test.get(label, np.full(d_sae, np.nan)),
                    "auroc_train": tests.aurocs_train.get(label, np.full(d_sae, np.nan)),
                    "selected": [(label, j) in picked for j in range(d_sae)],
                    "sample_fire_rate": (smax[sel] > 0).mean(0) if sel.any() else np.nan,
                    "fire_rate": fire_rate,
                    **tops,
                }
            )
        )
    table = pd.concat(tables, ignore_index=True)
    return table.sort_values("feature", kind="stable", ignore_index=True)


def best_aurocs(tests: FeatureTests, conditions: Mapping[str, str]) -> dict:
    """Per condition: the chosen features' test AUROCs (rank order) and the best of any
    feature on the test photos (descriptive: that one is chosen on the test data)."""
    out = {}
    for label in conditions:
        chosen = tests.selected[tests.selected.condition == label].feature.to_numpy()
        au = tests.aurocs_test.get(label)
        if au is None:
            continue
        strength = np.where(np.isfinite(au), np.abs(au - 0.5), -np.inf)
        out[label] = {
            "chosen_test_auroc": [float(au[j]) for j in chosen],
            "max_abs_test_auroc": float(au[int(np.argmax(strength))]),
        }
    return out
