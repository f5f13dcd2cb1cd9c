"""SAE files in SAELens 6.54's inference format, and the per-token activations SAEs train on.

A saved SAE is a folder with ``sae_weights.safetensors`` (W_enc [d_in, d_sae], b_enc
[d_sae], W_dec [d_sae, d_in], b_dec [d_in], float32) and ``cfg.json``, so
``sae_lens.SAE.load_from_disk(dir)`` loads it and its ``encode`` equals :meth:`SAE.encode`.
The training scale is folded into the weights, so ``normalize_activations`` is ``"none"``;
the full training config is kept under ``metadata.training``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
from jaxtyping import Float, Int
from safetensors.torch import load_file, save_file

from circuitflow import store
from circuitflow.sae.base import SAE, SAEError, architecture_names, get_sae_class
from circuitflow.sae.config import SAETrainConfig

SAE_LENS_VERSION = "6.54.12"  # the on-disk format written here
WEIGHTS_FILE = "sae_weights.safetensors"
CFG_FILE = "cfg.json"
METRICS_FILE = "metrics.json"
FEATURES_FILE = "features.csv"
# training settings of an SAE trained elsewhere (no metadata.training in its cfg.json): they
# only satisfy SAETrainConfig's checks; encoding reads d_in, d_sae and the architecture's keys
FOREIGN_TRAINING = {
    "l1_coefficient": 0.0,
    "lr": 1.0,
    "batch_size": 1,
    "n_epochs": 1,
    "training_tokens": None,
    "seed": 0,
    "normalize_activations": "none",
    "b_dec_init": "zeros",
    "train_threads": None,
}


# ---------------------------------------------------------------- inputs
@dataclass
class TokenActivations:
    """One hook's per-token activations from an activation store, with their coordinates.

    sample_index indexes the per-sample arrays (sample_ids, labels, splits).
    """

    hook: str
    x: Float[np.ndarray, "n_tokens d_in"]
    sample_index: Int[np.ndarray, " n_tokens"]
    position: Int[np.ndarray, " n_tokens"]
    token_id: Int[np.ndarray, " n_tokens"]
    sample_ids: np.ndarray  # [n_samples]
    labels: np.ndarray  # [n_samples]
    splits: np.ndarray  # [n_samples]

    def token_mask(self, split: str) -> np.ndarray:
        return self.splits[self.sample_index] == split


def read_tokens(path: str | os.PathLike, hook: str) -> TokenActivations:
    """The per-token group of an activation store for ``hook`` (BOS already excluded)."""
    root = zarr.open_group(Path(path), mode="r")
    group = root.get(store.TOKENS_GROUP)
    available = [] if group is None else sorted(n for n in group.array_keys() if "hook" in n)
    if hook not in available:
        stored = ", ".join(available) or "none"
        raise SAEError(
            f"{path}: no per-token activations for {hook} (stored: {stored}); "
            "add its layer to models.<model>.per_token_layers"
        )
    coords = store.read_sample_coords(path)
    name = f"{store.TOKENS_GROUP}/"
    return TokenActivations(
        hook=hook,
        x=store.read_array(path, name + hook),
        sample_index=store.read_array(path, name + "sample_index").astype(np.int64),
        position=store.read_array(path, name + "position"),
        token_id=store.read_array(path, name + "token_id"),
        sample_ids=coords["sample"],
        labels=coords["label"],
        splits=coords["split"],
    )


# ---------------------------------------------------------------- saving / loading
def sae_lens_cfg(sae: SAE, metadata: dict) -> dict:
    """cfg.json content in SAELens 6.54's inference format."""
    arch = sae.arch
    cfg = {
        "architecture": sae.architecture,
        "d_in": sae.cfg.d_in,
        "d_sae": sae.cfg.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",  # the training scale is folded into the weights
        "reshape_activations": "none",
        **arch.cfg_fields(sae.cfg),
    }
    details = sae.cfg.training_details()
    cfg["metadata"] = {
        "sae_lens_version": SAE_LENS_VERSION,
        "sae_lens_training_version": None,
        "trainer": "circuitflow",
        "training_architecture": sae.architecture,
        "training_architecture_details": arch.training_details(sae.cfg),
        "training_normalize_activations": sae.cfg.normalize_activations,
        "activation_scaling_factor": sae.scaling_factor,
        "training": details,
        "n_training_steps": sae.n_steps,
        "n_training_tokens": sae.n_training_tokens,
        **metadata,
    }
    return cfg


def save_sae(sae: SAE, out_dir: str | os.PathLike, metadata: dict) -> Path:
    """Write sae_weights.safetensors + cfg.json (SAELens 6.54 layout) into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {
        "W_dec": sae.W_dec,
        "W_enc": sae.W_enc,
        "b_dec": sae.b_dec,
        "b_enc": sae.b_enc,
    }
    weights = out_dir / WEIGHTS_FILE
    save_file({k: v.detach().float().contiguous() for k, v in tensors.items()}, weights)
    weights.chmod(0o644)  # safetensors creates it owner-only; the other files are 644
    cfg = sae_lens_cfg(sae, metadata)
    (out_dir / CFG_FILE).write_text(json.dumps(cfg, indent=2, default=_json_default) + "\n")
    return out_dir


def write_sae_folder(
    sae: SAE,
    out_dir: str | os.PathLike,
    metadata: dict,
    held_out,
    on_train,
    metrics: dict,
    features,
    measurements,
) -> Path:
    """One trained SAE's folder: the SAELens weights + cfg.json (``metadata`` plus the
    held-out reconstruction figures of ``held_out`` / ``on_train``, ReconstructionMetrics),
    metrics.json, features.csv and measurements.csv (full precision: the statistics phase
    ranks them, and rounding must not make ties)."""
    out_dir = Path(out_dir)
    recon = {
        "l0": held_out.l0,
        "explained_variance": held_out.explained_variance,
        "num_dead_features": held_out.n_dead,
        "dead_fraction": held_out.dead_fraction,
        "train_num_dead_features": on_train.n_dead,
    }
    save_sae(sae, out_dir, metadata={**metadata, **recon})
    (out_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    features.to_csv(out_dir / FEATURES_FILE, index=False, float_format="%.6g")
    measurements.to_csv(out_dir / store.MEASUREMENTS_FILE, index=False)
    return out_dir


def load_sae(path: str | os.PathLike) -> SAE:
    """Read back a saved SAE (ours, or a SAELens SAE of a registered architecture with no
    runtime scaling). Ours get back their training config from ``metadata.training``."""
    path = Path(path)
    cfg = json.loads((path / CFG_FILE).read_text())
    if cfg["architecture"] not in architecture_names():
        raise SAEError(
            f"{path}: architecture {cfg['architecture']!r} not in {architecture_names()}"
        )
    if cfg.get("normalize_activations", "none") != "none":
        raise SAEError(
            f"{path}: normalize_activations {cfg['normalize_activations']!r} unsupported"
        )
    d_in, d_sae = cfg["d_in"], cfg["d_sae"]
    if d_sae % d_in:
        raise SAEError(f"{path}: d_sae {d_sae} is not a multiple of d_in {d_in}")
    meta = cfg.get("metadata", {})
    training = dict(meta.get("training") or FOREIGN_TRAINING)
    training.pop("d_sae", None)
    if "adam_betas" in training:
        training["adam_betas"] = tuple(training["adam_betas"])
    training.setdefault("k", min(32, d_sae))  # required by the config, used by topk only
    training.update(
        d_in=d_in,
        architecture=cfg["architecture"],
        expansion_factor=d_sae // d_in,
        **get_sae_class(cfg["architecture"]).settings_from_cfg(cfg),
    )
    tensors = load_file(path / WEIGHTS_FILE)
    return SAE(
        W_enc=tensors["W_enc"].float(),
        b_enc=tensors["b_enc"].float(),
        W_dec=tensors["W_dec"].float(),
        b_dec=tensors["b_dec"].float(),
        cfg=SAETrainConfig(**training),
        scaling_factor=float(meta.get("activation_scaling_factor", 1.0)),
        n_steps=int(meta.get("n_training_steps", 0)),
        n_training_tokens=int(meta.get("n_training_tokens", 0)),
    )


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__}")
