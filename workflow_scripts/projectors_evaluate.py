"""evaluate_projector: a trained VLM on the caption dataset's test photos ->
results/projectors/{dataset}/{model}/ (evaluation.csv per image, measurements.csv, metrics.json,
training.csv) + manifest. Every metric is also taken with a mismatched image (a seeded draw
from another test photo): the null that keeps the model, captions and distractors and only
breaks the image-caption link, so a text prior cannot pass for reading the image."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from circuitflow import datasets, devices, projectors, store
from circuitflow.core import rand
from circuitflow.workflow import run_logged


def mismatched(rows, seed):
    """Per test row, the index of a row of another source photo (seeded)."""
    gen = rand.rng(seed, 1)
    sources = np.array([r["source"] for r in rows])
    out = []
    for s in sources:
        others = np.flatnonzero(sources != s)
        if not len(others):
            raise ValueError(
                f"evaluate_projector: the test split has one source photo ({s}); the mismatched"
                " image null needs two (raise test_fraction or add photos)"
            )
        out.append(int(gen.choice(others)))
    return np.array(out)


def evaluate(vlm, images, rows, spec, cfg, other, scorer=None):
    """Per image (columns of evaluation.csv): caption NLL, retrieval per attribute, the
    attribute words of the greedy description and its score under ``scorer`` (an open_clip
    VisionModel and its tokenizer), with the image's own and a mismatched one."""
    batch = cfg["eval_batch_size"]
    max_tokens = cfg["max_caption_tokens"]
    tokens = vlm.encode_images(images, batch)
    captions = [r["caption"] for r in rows]
    table = pd.DataFrame(
        {
            "sample_id": [r["sample_id"] for r in rows],
            "source": [r["source"] for r in rows],
            "mismatched_sample_id": [rows[j]["sample_id"] for j in other],
        }
    )
    distractors = [datasets.distractor_captions(r, spec) for r in rows]
    for arm, tok in (("", tokens), ("mismatched_", tokens[other])):
        true, count = projectors.score_captions(vlm, tok, captions, batch, max_tokens)
        table[f"{arm}caption_nll"] = -true / count
        for attribute in spec.attributes:
            alt = [d[attribute] for d in distractors]
            k = len(alt[0])
            flat = [c for group in alt for c in group]
            reps = tok.repeat_interleave(k, dim=0)
            total, _ = projectors.score_captions(vlm, reps, flat, batch, max_tokens)
            correct, rank = projectors.rank_truth(true, total.reshape(len(rows), k))
            table[f"{arm}retrieval_{attribute}"] = correct
            table[f"{arm}rank_{attribute}"] = rank
            table[f"chance_{attribute}"] = 1.0 / (k + 1)
    if cfg["describe_tokens"]:
        text = projectors.greedy_descriptions(vlm, images, "", cfg["describe_tokens"], batch)
        table["description"] = text
        for attribute in spec.attributes:
            truth = [r[attribute] for r in rows]
            named = [datasets.caption_levels(t, (attribute,))[attribute] for t in text]
            own = zip(named, truth, strict=True)
            table[f"words_{attribute}"] = [float(n == (t,)) for n, t in own]
            table[f"mismatched_words_{attribute}"] = [
                float(named[j] == (t,)) for j, t in zip(other, truth, strict=True)
            ]
        if scorer is not None:
            clip, tokenizer = scorer
            pixels = clip.preprocess(images)
            for arm, pix in (("", pixels), ("mismatched_", pixels[other])):
                table[f"{arm}siglip_score"] = projectors.siglip_score(
                    clip.module, tokenizer, pix, text, batch
                )
    return table


def load_scorer(model_dir, name):
    """(open_clip VisionModel, its tokenizer) of the prepared score model."""
    import open_clip

    from circuitflow import models

    clip = models.load_vision_model(model_dir, name)  # in eval mode
    return clip, open_clip.get_tokenizer("local-dir:" + str(model_dir))


def measurements(table, dataset, model, attributes, describe):
    """The per-image values as measurements (units = source photos: images of one photo
    are averaged by the statistics phase), treatment = own image, baseline = mismatched."""
    parts = [("caption_nll", "all", "caption_nll")]
    parts += [(f"retrieval_{a}", a, "retrieval_accuracy") for a in attributes]
    if describe:
        parts += [(f"words_{a}", a, "attribute_word_accuracy") for a in attributes]
    if "siglip_score" in table:
        parts.append(("siglip_score", "all", "siglip_score"))
    frames = []
    for column, condition, metric in parts:
        for arm, col in (("treatment", column), ("baseline", f"mismatched_{column}")):
            frames.append(
                pd.DataFrame(
                    {
                        "phase": "projectors",
                        "dataset": dataset,
                        "model": model,
                        "layer": "",
                        "site": "projector.hook_out",
                        "position": "image_tokens",
                        "condition": condition,
                        "setting": "null=mismatched_image",
                        "metric": metric,
                        "arm": arm,
                        "unit": table["source"],
                        "value": table[col].astype(float),
                        "unit_kind": "photo",
                    }
                )
            )
    return pd.concat(frames, ignore_index=True)


def main(smk):
    p = smk.params
    cfg = p.projectors
    rows = [r for r in store.read_samples(smk.input.dataset) if r["split"] == "test"]
    if cfg["eval_views"]:  # the first views of each test photo
        by_photo = {}
        for r in rows:
            by_photo.setdefault(r["source"], []).append(r)
        rows = [r for views in by_photo.values() for r in views[: cfg["eval_views"]]]
    if not rows:
        raise ValueError(f"{smk.input.dataset}: no test-split captions to evaluate on")
    entry = p.entry
    spec = datasets.CaptionSpec.from_config(entry, p.dataset)
    images = store.read_images(smk.input.dataset, np.array([r["image_index"] for r in rows]))
    vlm = projectors.AssembledVLM.load(smk.input.model).to(devices.job_device(p.device))
    other = mismatched(rows, p.seed)
    scorer = None
    if "score_model" in smk.input.keys() and cfg["describe_tokens"]:
        scorer = load_scorer(smk.input.score_model, cfg["score_model"])
    table = evaluate(vlm, images, rows, spec, cfg, other, scorer)
    out = Path(smk.output[0])
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "evaluation.csv", index=False, float_format="%.6g")
    m = measurements(table, p.dataset, p.model, spec.attributes, bool(cfg["describe_tokens"]))
    m.to_csv(out / store.MEASUREMENTS_FILE, index=False, float_format="%.6g")
    shutil.copy(Path(smk.input.model) / store.TRAINING_CURVE, out / store.TRAINING_CURVE)
    trained = store.read_manifest(smk.input.model)
    per_photo = table.groupby("source").mean(numeric_only=True)
    metrics = {
        "model": p.model,
        "architecture": vlm.config["projector"]["name"],
        "n_test_images": len(table),
        "n_test_photos": int(table["source"].nunique()),
        "n_projector_params": trained["n_projector_params"],
        "n_image_tokens": trained["n_image_tokens"],
        "train_s": trained["train_s"],
        "caption_nll": float(per_photo["caption_nll"].mean()),
        "mismatched_caption_nll": float(per_photo["mismatched_caption_nll"].mean()),
        "retrieval": {
            a: {
                "accuracy": float(per_photo[f"retrieval_{a}"].mean()),
                "mismatched": float(per_photo[f"mismatched_retrieval_{a}"].mean()),
                "chance": float(table[f"chance_{a}"].iloc[0]),
            }
            for a in spec.attributes
        },
    }
    if "siglip_score" in table:
        metrics["siglip_score"] = {
            "score_model": cfg["score_model"],
            "own": float(per_photo["siglip_score"].mean()),
            "mismatched": float(per_photo["mismatched_siglip_score"].mean()),
        }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps(metrics, indent=1))
    store.write_manifest(
        out,
        kind="projector_evaluation",
        inputs=dict(smk.input.items()),
        params={"dataset": p.dataset, "model": p.model, "projectors": dict(cfg)},
        seeds={"mismatched_image": p.seed},
        extra={"n_test_images": len(table), "n_test_photos": metrics["n_test_photos"]},
    )


run_logged(snakemake, main)  # noqa: F821
