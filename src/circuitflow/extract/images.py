"""Image extraction: a vision encoder's or VLM's hook points, pooled, into the text store layout.

One array per block hook, dims (sample, position, d_model) with positions
``store.VISION_POSITIONS``; coords sample/label/split/frame_id (+ attribute, level); the
per-spatial-position tokens of ``per_token_layers`` in the ``tokens`` group.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import zarr
from tqdm import tqdm
from zarr.codecs import BloscCodec

from circuitflow import store
from circuitflow.extract.text import ExtractionError, finite_for_store, leaves_no_partial_store
from circuitflow.models import Capture, VisionModel, take_images


@leaves_no_partial_store
def extract_images_to_zarr(
    vm: VisionModel,
    rows: Sequence[dict],
    images: np.ndarray,
    out_path: str | os.PathLike,
    layers: Sequence[int] | None = None,
    per_token_layers: Sequence[int] = (),
    batch_size: int = 16,
    store_dtype: str = "float16",
    compression_level: int = 3,
    progress: bool = True,
) -> dict:
    """The activation store of ``rows`` (images[row.image_index]) in the text layout:
    one array per block hook, dims (sample, position, d_model), positions
    store.VISION_POSITIONS; coords sample/label/split/frame_id (+ attribute, level);
    per-spatial-position tokens of ``per_token_layers`` in the ``tokens`` group."""
    block_hooks = [h for h in vm.hooks if _layer(h.name) is not None]
    n_layers = max(_layer(h.name) for h in block_hooks) + 1
    if layers is not None:
        bad = [x for x in layers if not 0 <= x < n_layers]
        if bad:
            raise ExtractionError(
                f"extract.layers: layer {bad[0]} out of range for model {vm.name!r} with "
                f"{n_layers} blocks (0..{n_layers - 1})"
            )
    # every hook with layers "all" (the VLM projector too: stored, though not a block so the
    # vectors phase skips it); with a layer list, the blocks of those indices in every tower
    wanted = [h.name for h in vm.hooks if layers is None or _layer(h.name) in set(layers)]
    per_tok = [h.name for h in block_hooks if _layer(h.name) in set(per_token_layers)]
    tok_names = {}
    for name in per_tok:
        layer, site = store.parse_hook_name(name)
        if site != "hook_resid_post" and site != "hook_out" and not site.endswith("resid_post"):
            continue
        tok_names[name] = layer
    N = len(rows)
    dev = next(vm.module.parameters())
    order = np.asarray([r["image_index"] for r in rows])
    store.ignore_unstable_dtype_warning()
    root = zarr.open_group(Path(out_path), mode="w", zarr_format=3)
    root.attrs.update(
        {
            "model": vm.name,
            "modality": "image",
            "positions": list(store.VISION_POSITIONS),
            "position_definitions": {
                "mean": "mean over spatial tokens (CNN grid, ViT patches, LM image tokens)",
                "center": "the center spatial token",
                "max": "per-channel max over spatial tokens",
            },
            "image_size": vm.image_size,
            "n_layers": n_layers,
            "backend": vm.backend,
        }
    )
    coords = {
        "sample": np.array([r["sample_id"] for r in rows]),
        **{k: np.array([str(r[k]) for r in rows]) for k in store.SAMPLE_COORDS},
        "attribute": np.array([str(r.get("attribute", "")) for r in rows]),
        "level": np.array([float(r.get("level", 0.0)) for r in rows]),
    }
    for key, values in coords.items():
        root.create_array(key, data=values, dimension_names=["sample"])
    root.create_array(
        "position", data=np.array(store.VISION_POSITIONS), dimension_names=["position"]
    )
    comp = BloscCodec(cname="zstd", clevel=compression_level, shuffle="shuffle")
    coord_attr = " ".join([*store.SAMPLE_COORDS, "attribute", "level"])
    arrays, tok_arrays, bufs, tok_bufs = {}, {}, {}, {}
    info_shapes = {}
    bar = tqdm(total=N, desc=f"extract {vm.name}", unit="image", disable=not progress)
    cap = Capture(vm, wanted, list(tok_names))
    for b0 in range(0, N, batch_size):
        idx = order[b0 : b0 + batch_size]
        pixels = vm.preprocess(take_images(images, idx)).to(dev.device, dev.dtype)
        pooled, tokens = cap.run(pixels)
        for name, values in pooled.items():
            bufs.setdefault(name, []).append(values)
        for name, values in tokens.items():
            tok_bufs.setdefault(name, []).append(values)
        bar.update(len(idx))
    bar.close()
    missing = [name for name in wanted if name not in bufs]
    if missing:
        raise ExtractionError(f"model {vm.name!r}: hook {missing[0]} never fired")
    widths = {bufs[name][0].shape[-1] for name in wanted}
    for name in wanted:
        values = np.concatenate(bufs[name])
        # one feature dim name per width, so xarray opens stores whose hooks differ in width
        d_dim = "d_model" if len(widths) == 1 else f"d_model_{values.shape[-1]}"
        values = finite_for_store(name, values, store_dtype, vm.name, coords["sample"])
        info_shapes[name] = list(values.shape)
        arrays[name] = root.create_array(
            name,
            data=values,
            chunks=(min(N, 256), *values.shape[1:]),
            compressors=comp,
            dimension_names=["sample", "position", d_dim],
            attributes={"coordinates": coord_attr},
        )
    if tok_bufs:
        grp = root.create_group(store.TOKENS_GROUP)
        first = np.concatenate(tok_bufs[next(iter(tok_bufs))])
        n_tok = first.shape[1]
        grp.create_array(
            "sample_index",
            data=np.repeat(np.arange(N, dtype=np.int32), n_tok),
            dimension_names=["token"],
        )
        grp.create_array(
            "position",
            data=np.tile(np.arange(n_tok, dtype=np.int32), N),
            dimension_names=["token"],
            attributes={"definition": "spatial token index (row-major over the grid)"},
        )
        for name, pieces in tok_bufs.items():
            flat = np.concatenate(pieces).reshape(-1, pieces[0].shape[-1])
            tok_arrays[name] = grp.create_array(
                name,
                data=finite_for_store(
                    name, flat, store_dtype, vm.name, np.repeat(coords["sample"], len(flat) // N)
                ),
                chunks=(min(len(flat), 4096), flat.shape[1]),
                compressors=comp,
                dimension_names=["token", "d_model"],
            )
    return {
        "n_samples": N,
        "hooks": wanted,
        "shapes": info_shapes,
        "per_token": sorted(tok_arrays),
        "image_size": vm.image_size,
    }


def _layer(name: str) -> int | None:
    try:
        return store.parse_hook_name(name)[0]
    except ValueError:
        return None
