"""build_images: photographs (builtin, files, folders), a scored CSV manifest, or image-caption
pairs -> results/datasets/{dataset}/ (samples.jsonl + images.zarr + manifest)."""

from circuitflow import datasets, store
from circuitflow.workflow import run_logged


def main(smk):
    p = smk.params
    if p.kind == "image_manifest":
        m = p.manifest
        rows, ims = datasets.build_manifest_dataset(
            m["csv"],
            m["layout"],
            p.images["size"],
            p.test_fraction,
            p.seed,
            m.get("image_root"),
            m.get("columns"),
        )
        unknown = sorted({r["label"] for r in rows} - set(p.labels))
        if unknown:
            raise datasets.ImageDatasetError(
                f"config key datasets.{p.dataset}.labels: manifest labels include {unknown[0]!r}; "
                "use labels [high, mid, low]"
            )
    elif p.kind == "captions":
        entry = {
            "images": dict(p.images),
            "captions": dict(p.captions),
            "test_fraction": p.test_fraction,
        }
        rows, ims = datasets.caption_dataset_from_config(entry, p.seed, name=p.dataset)
    else:
        settings = dict(p.images)
        spec = datasets.ImageSpec(
            labels=tuple(p.labels),
            size=settings["size"],
            work_size=settings["work_size"],
            jitter_copies=settings["jitter_copies"],
            levels={**datasets.DEFAULT_LEVELS, **settings.get("levels", {})},
        )
        rows, ims = datasets.build_image_dataset(settings["sources"], spec, p.test_fraction, p.seed)
    store.write_samples(smk.output[0], rows)
    store.write_images(smk.output[0], ims)
    counts = datasets.label_counts(rows)
    sources = {r["frame_id"]: r["split"] for r in rows}
    print(f"{len(rows)} images from {len(sources)} sources: {counts}")
    store.write_manifest(
        smk.output[0],
        kind="dataset",
        inputs=dict(smk.input.items()),
        params={
            "dataset": p.dataset,
            "kind": p.kind,
            "labels": list(p.labels),
            "baseline": p.baseline,
            "images": dict(p.images),
            "manifest": dict(p.manifest),
            "captions": dict(p.captions),
            "test_fraction": p.test_fraction,
        },
        seeds={"split": p.seed, "jitter": p.seed},
        extra={
            "counts": counts,
            "n_frames": len(sources),
            "sources": sources,
            "image_shape": list(ims.shape[1:]),
        },
    )


run_logged(snakemake, main)  # noqa: F821
