"""Text extraction: batched forward passes through a TransformerBridge into one Zarr store.

Only the hooks that are stored are attached, reductions happen inside the hooks (no full
cache), and the forward pass stops after the last hook that is needed, so the unembedding
is skipped. Sequences are right-padded: under causal attention the real tokens never see
the padding, so no attention mask is needed and values equal an unpadded forward pass.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import zarr
from zarr.codecs import BloscCodec

from circuitflow import store
from circuitflow.core.errors import CircuitflowError, ConfigError, HookError
from circuitflow.core.hooks import StopForward, attach_bridge, run_to_stop
from circuitflow.core.tokens import Tokenized, pad_id, right_pad, tokenize
from circuitflow.workflow import schema_backed

SITE_ORDER = {"hook_resid_pre": 0, "attn.hook_z": 1, "hook_resid_post": 2}
STORE_DTYPES = ("float16", "float32")
COORDS_ATTR = " ".join(store.SAMPLE_COORDS)  # xarray reads these as coordinates


class ExtractionError(CircuitflowError, RuntimeError):
    """Activations cannot be stored faithfully; the message names model, hook and fix."""


@dataclass(frozen=True)
@schema_backed("extract")
class ExtractConfig:
    """What to extract from one model. Layers are block indices; ``"all"`` (or ``None``): all."""

    n_layers: int
    layers: str | tuple[int, ...] | None
    sites: tuple[str, ...]
    head_layers: tuple[int, ...] | None = None
    per_token_layers: tuple[int, ...] = ()
    batch_size: int
    chunk_samples: int
    store_dtype: str
    prepend_bos: bool = True
    compression_level: int
    model_name: str = "model"
    resid_layers: tuple[int, ...] = field(init=False)
    head_layers_: tuple[int, ...] = field(init=False)

    def __post_init__(self):
        all_layers = self.layers is None or self.layers == "all"
        layers = tuple(range(self.n_layers)) if all_layers else tuple(self.layers)
        heads = layers if self.head_layers is None else tuple(self.head_layers)
        for key, values in (
            ("layers", layers),
            ("head_layers", heads),
            ("per_token_layers", self.per_token_layers),
        ):
            bad = [v for v in values if not 0 <= v < self.n_layers]
            if bad:
                raise ConfigError(
                    f"extract.{key}: layer {bad[0]} out of range for model "
                    f"{self.model_name!r} with {self.n_layers} layers (0..{self.n_layers - 1})"
                )
        unknown = [s for s in self.sites if s not in store.SITES]
        if unknown:
            raise ConfigError(
                f"extract.sites: unknown site {unknown[0]!r}; expected {', '.join(store.SITES)}"
            )
        if self.store_dtype not in STORE_DTYPES:
            raise ConfigError(
                f"extract.store_dtype: {self.store_dtype!r} not in {', '.join(STORE_DTYPES)}"
            )
        if self.batch_size < 1 or self.chunk_samples < 1:
            raise ConfigError("extract.batch_size and extract.chunk_samples must be >= 1")
        object.__setattr__(self, "resid_layers", tuple(sorted(set(layers))))
        object.__setattr__(self, "head_layers_", tuple(sorted(set(heads))))

    def hooks(self) -> list[str]:
        """Hook names to attach, in forward order."""
        names = {store.hook_name(layer, site) for layer in self.resid_layers for site in self.sites}
        names |= {store.hook_name(layer, "hook_resid_post") for layer in self.per_token_layers}
        names |= {store.hook_name(layer, "attn.hook_z") for layer in self.head_layers_}
        return sorted(
            names,
            key=lambda n: (store.parse_hook_name(n)[0], SITE_ORDER[store.parse_hook_name(n)[1]]),
        )


class _Recorder:
    """Hook functions attached once for a whole run; each batch sets its masks and indices.

    Entering ``bridge.hooks`` per batch costs ~0.4 s (TransformerLens rebuilds its alias map),
    more than the forward pass of a small batch, so hooks stay attached across batches.
    """

    def __init__(self, bridge, cfg: ExtractConfig, pad_id: int, positions=store.POSITIONS):
        self.bridge, self.cfg, self.pad_id = bridge, cfg, pad_id
        self.positions = tuple(positions)
        self.device = next(bridge.parameters()).device
        self.W_O = bridge.W_O.detach().float()
        self.hooks = cfg.hooks()
        self.per_token_names = {
            store.hook_name(layer, "hook_resid_post"): layer for layer in cfg.per_token_layers
        }
        self.pooled_names = {
            store.hook_name(layer, site) for layer in cfg.resid_layers for site in cfg.sites
        }

    def fwd_hooks(self):
        return [(name, lambda x, name=name: self.record(x, name)) for name in self.hooks]

    def record(self, x, name):
        layer, site = store.parse_hook_name(name)
        x = x.float()
        B = x.shape[0]
        if site == "attn.hook_z":
            z = x[self.rows, self.last].reshape(B, self.W_O.shape[1], -1)  # [B, head, d_head]
            result = torch.einsum("bhd,hdm->bhm", z, self.W_O[layer])
            self.pooled[store.hook_name(layer, store.HEAD_SITE)] = result.cpu().numpy()
        else:
            if name in self.pooled_names:
                pools = {
                    "last": lambda: x[self.rows, self.last],
                    "trigger_mean": lambda: (x * self.span_w).sum(1),
                    "mean": lambda: (x * self.tok_w).sum(1),
                }
                pooled = torch.stack([pools[p]() for p in self.positions], dim=1)
                self.pooled[name] = pooled.cpu().numpy()
            if name in self.per_token_names:
                xc = x.cpu()
                self.per_token[self.per_token_names[name]] = [
                    xc[i, t.first : len(t.ids)].numpy() for i, t in enumerate(self.batch)
                ]
        if name == self.hooks[-1]:
            raise StopForward
        return None

    def run(self, batch: Sequence[Tokenized]):
        """Forward one right-padded batch; returns ({hook: pooled array}, {layer: per-token})."""
        B = len(batch)
        tokens, lengths = right_pad([t.ids for t in batch], self.pad_id)
        lengths = torch.tensor(lengths)
        P = tokens.shape[1]
        span = torch.zeros(B, P)
        tok = torch.zeros(B, P)
        for i, t in enumerate(batch):
            span[i, torch.from_numpy(t.span)] = 1
            tok[i, t.first : len(t.ids)] = 1
        dev = self.device
        self.batch = batch
        self.rows = torch.arange(B, device=dev)
        self.last = (lengths - 1).to(dev)
        self.span_w = (span / span.sum(1, keepdim=True).clamp(min=1)).unsqueeze(-1).to(dev)
        self.tok_w = (tok / tok.sum(1, keepdim=True)).unsqueeze(-1).to(dev)
        self.pooled, self.per_token = {}, {}
        run_to_stop(self.bridge, tokens.to(dev), return_type=None)
        fired = set(self.pooled) | {
            store.hook_name(layer, "hook_resid_post") for layer in self.per_token
        }
        for name in self.hooks:
            layer, site = store.parse_hook_name(name)
            key = store.hook_name(layer, store.HEAD_SITE) if site == "attn.hook_z" else name
            if key not in fired:
                raise HookError(f"model {self.cfg.model_name!r}: hook {name} never fired")
        return self.pooled, self.per_token


def _compressor(level: int):
    return BloscCodec(cname="zstd", clevel=level, shuffle="shuffle")


def finite_for_store(
    name: str, arr: np.ndarray, store_dtype: str, model: str, sample_ids: Sequence[str]
) -> np.ndarray:
    """``arr`` ([row, ...], one sample id per row) as ``store_dtype``; an
    :class:`ExtractionError` naming model, hook and the first samples if any value is NaN/inf
    or too large for float16 (it would be stored as inf)."""
    flat = arr.reshape(len(arr), -1)
    bad = ~np.isfinite(flat).all(axis=1)
    if bad.any():
        raise ExtractionError(
            f"model {model!r}: NaN/inf activations at {name} in {_samples(sample_ids, bad)}; "
            f"check the model's weights and dtype (models.{model}.dtype: float32)"
        )
    if store_dtype == "float16":
        peaks = np.abs(flat).max(axis=1, initial=0.0)
        over = peaks > float(np.finfo(np.float16).max)
        if over.any():
            raise ExtractionError(
                f"model {model!r}: |activation| {peaks.max():.3g} at {name} in "
                f"{_samples(sample_ids, over)} overflows float16; set extract.store_dtype: float32"
            )
    return arr.astype(store_dtype)


def _check_finite(
    name: str, arr: np.ndarray, cfg: ExtractConfig, sample_ids: Sequence[str] | None = None
) -> np.ndarray:
    """:func:`finite_for_store` with ``cfg``'s dtype and model (rows unnamed: their indices)."""
    ids = np.arange(len(arr)).astype(str) if sample_ids is None else sample_ids
    return finite_for_store(name, arr, cfg.store_dtype, cfg.model_name, ids)


def _samples(sample_ids: Sequence[str], mask: np.ndarray) -> str:
    """ "2 samples (p00001, p00004)": how many rows ``mask`` marks, the first sample ids."""
    ids = list(dict.fromkeys(str(s) for s in np.asarray(sample_ids)[mask]))
    shown = ", ".join(ids[:3]) + (", ..." if len(ids) > 3 else "")
    return f"{len(ids)} sample{'s' if len(ids) != 1 else ''} ({shown})"


def leaves_no_partial_store(fn):
    """Decorator of a function writing a store at its ``out_path`` argument: on any failure
    the half-written store is deleted, so no later step reads it."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        out_path = signature.bind(*args, **kwargs).arguments["out_path"]
        try:
            return fn(*args, **kwargs)
        except BaseException:
            store.remove_partial(out_path)
            raise

    return wrapper


# ---------------------------------------------------------------- resumable work
WORK_STORE = "activations.zarr"  # in a job's work_dir, moved to out_path when complete
PROGRESS_FILE = "progress.json"  # in a job's work_dir: the layout and the finished chunks


def _resume(work_dir: Path | None, layout: dict) -> set[int] | None:
    """The finished chunk starts of an interrupted run of the same layout, or None (start
    afresh: no work_dir, no progress, another layout, or no store)."""
    if work_dir is None or not (work_dir / PROGRESS_FILE).is_file():
        return None
    progress = json.loads((work_dir / PROGRESS_FILE).read_text())
    if progress.get("layout") != json.loads(json.dumps(layout)):
        return None
    if not (work_dir / WORK_STORE).is_dir():
        return None
    return set(progress.get("done", []))


def _record(work_dir: Path | None, layout: dict, done: set[int]) -> None:
    """Write the finished chunk starts atomically (a kill leaves the previous record)."""
    if work_dir is None:
        return
    tmp = work_dir / f"{PROGRESS_FILE}.tmp"
    tmp.write_text(json.dumps({"layout": layout, "done": sorted(done)}, sort_keys=True))
    os.replace(tmp, work_dir / PROGRESS_FILE)


def _finish(work: Path, out_path: Path, work_dir: Path | None) -> None:
    """Drop zarr's in-flight files a killed run left, move a store built in ``work_dir`` to
    ``out_path`` and drop the work folder."""
    for leftover in work.rglob(f"*{store.PARTIAL_SUFFIX}"):
        leftover.unlink()
    if work_dir is None:
        return
    store.remove_partial(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(work), str(out_path))
    shutil.rmtree(work_dir, ignore_errors=True)


def text_positions(toks: Sequence[Tokenized], sample_ids: Sequence[str]) -> tuple[str, ...]:
    """The pooled positions stored: ``store.POSITIONS`` without ``trigger_mean`` when a sample
    has no trigger span (one printed line names how many)."""
    missing = np.array([len(t.span) == 0 for t in toks])
    if not missing.any():
        return store.POSITIONS
    print(
        f"{_samples(sample_ids, missing)} of {len(toks)} have no trigger span: position "
        "trigger_mean is not stored, so every phase skips it"
    )
    return tuple(p for p in store.POSITIONS if p != "trigger_mean")


@leaves_no_partial_store
def extract_to_zarr(
    bridge,
    rows: Sequence[dict],
    cfg: ExtractConfig,
    out_path: str | os.PathLike,
    progress: bool = True,
    work_dir: str | os.PathLike | None = None,
) -> dict:
    """Write the activation store for ``rows`` at ``out_path``; returns summary facts.

    With ``work_dir`` (one per job: keyed by its inputs, params and code) the store is built
    there and moved to ``out_path`` when complete. Every finished chunk of
    ``cfg.chunk_samples`` samples is recorded, so a run killed halfway and started again
    computes only the missing chunks; the finished store is the same, file by file.
    """
    from tqdm import tqdm

    tokenizer = bridge.tokenizer
    toks = tokenize(tokenizer, rows, cfg.prepend_bos)
    positions = text_positions(toks, [r["sample_id"] for r in rows])
    pad = pad_id(tokenizer)
    d_model = bridge.cfg.d_model
    n_heads = bridge.W_O.shape[1]
    N = len(rows)
    chunk = min(cfg.chunk_samples, N)
    n_tok_per = np.array([len(t.ids) - t.first for t in toks])
    offsets = np.concatenate([[0], np.cumsum(n_tok_per)])
    work_dir = Path(work_dir) if work_dir is not None else None
    layout = {"n_samples": N, "chunk": chunk, "hooks": cfg.hooks(), "d_model": d_model}
    if positions != store.POSITIONS:
        layout["positions"] = list(positions)
    done = _resume(work_dir, layout)
    work = Path(out_path) if work_dir is None else work_dir / WORK_STORE

    store.ignore_unstable_dtype_warning()
    if done is None:
        if work_dir is not None:
            store.remove_partial(work_dir)
            work_dir.mkdir(parents=True)
        root = zarr.open_group(work, mode="w", zarr_format=3)
        arrays, tok_arrays = _create_layout(
            root, rows, toks, cfg, d_model, n_heads, offsets, positions
        )
        done = set()
        _record(work_dir, layout, done)
    else:
        root = zarr.open_group(work, mode="r+")
        arrays = {name: root[name] for name in _pooled_names(cfg)}
        grp = root[store.TOKENS_GROUP] if cfg.per_token_layers else None
        tok_arrays = {
            layer: grp[store.hook_name(layer, "hook_resid_post")] for layer in cfg.per_token_layers
        }
        print(f"resuming {work}: {len(done)} of {-(-N // chunk)} chunks already written")

    recorder = _Recorder(bridge, cfg, pad, positions)
    sample_ids = np.array([r["sample_id"] for r in rows])
    bar = tqdm(total=N, desc=f"extract {cfg.model_name}", unit="prompt", disable=not progress)
    with torch.no_grad(), attach_bridge(bridge, recorder.fwd_hooks()):
        for c0 in range(0, N, chunk):
            c1 = min(N, c0 + chunk)
            if c0 in done:
                bar.update(c1 - c0)
                continue
            idx = sorted(range(c0, c1), key=lambda i: (len(toks[i].ids), i))
            buf = {
                name: np.empty((c1 - c0,) + a.shape[1:], dtype=np.float32)
                for name, a in arrays.items()
            }
            tok_buf = {
                layer: np.empty((offsets[c1] - offsets[c0], d_model), np.float32)
                for layer in tok_arrays
            }
            for b0 in range(0, len(idx), cfg.batch_size):
                sel = idx[b0 : b0 + cfg.batch_size]
                pooled, per_token = recorder.run([toks[i] for i in sel])
                local = np.asarray(sel) - c0
                for name, values in pooled.items():
                    buf[name][local] = values
                for layer, pieces in per_token.items():
                    for i, piece in zip(sel, pieces, strict=True):
                        tok_buf[layer][offsets[i] - offsets[c0] : offsets[i + 1] - offsets[c0]] = (
                            piece
                        )
                bar.update(len(sel))
            ids = sample_ids[c0:c1]
            for name, values in buf.items():
                arrays[name][c0:c1] = _check_finite(name, values, cfg, ids)
            for layer, values in tok_buf.items():
                name = f"{store.TOKENS_GROUP}/{store.hook_name(layer, 'hook_resid_post')}"
                tok_ids = np.repeat(ids, n_tok_per[c0:c1])
                tok_arrays[layer][offsets[c0] : offsets[c1]] = _check_finite(
                    name, values, cfg, tok_ids
                )
            done.add(c0)
            _record(work_dir, layout, done)
    bar.close()
    _finish(work, Path(out_path), work_dir)
    return {
        "n_samples": N,
        "n_tokens": int(sum(len(t.ids) for t in toks)),
        "hooks": cfg.hooks(),
        "d_model": d_model,
        "n_heads": n_heads,
    }


def _pooled_names(cfg: ExtractConfig) -> list[str]:
    names = [store.hook_name(layer, site) for layer in cfg.resid_layers for site in cfg.sites]
    return names + [store.hook_name(layer, store.HEAD_SITE) for layer in cfg.head_layers_]


def _create_layout(
    root, rows, toks, cfg: ExtractConfig, d_model, n_heads, offsets, positions=store.POSITIONS
):
    """Coordinates and empty hook arrays of a new store: (pooled arrays, per-token arrays)."""
    N = len(rows)
    chunk = min(cfg.chunk_samples, N)
    root.attrs.update(
        {
            "model": cfg.model_name,
            "positions": list(positions),
            "prepend_bos": cfg.prepend_bos,
            "mean_excludes_bos": True,
            "n_layers": cfg.n_layers,
            "d_model": d_model,
            "n_heads": n_heads,
        }
    )
    for key, values in _coords(rows).items():
        root.create_array(key, data=values, dimension_names=["sample"])
    root.create_array("position", data=np.array(positions), dimension_names=["position"])
    root.create_array(
        "n_tokens",
        data=np.array([len(t.ids) for t in toks], dtype=np.int32),
        dimension_names=["sample"],
    )
    comp = _compressor(cfg.compression_level)
    arrays = {}
    for layer in cfg.resid_layers:
        for site in cfg.sites:
            name = store.hook_name(layer, site)
            arrays[name] = root.create_array(
                name,
                shape=(N, len(positions), d_model),
                chunks=(chunk, len(positions), d_model),
                dtype=cfg.store_dtype,
                compressors=comp,
                dimension_names=["sample", "position", "d_model"],
                attributes={"coordinates": COORDS_ATTR},
            )
    for layer in cfg.head_layers_:
        name = store.hook_name(layer, store.HEAD_SITE)
        arrays[name] = root.create_array(
            name,
            shape=(N, n_heads, d_model),
            chunks=(chunk, n_heads, d_model),
            dtype=cfg.store_dtype,
            compressors=comp,
            dimension_names=["sample", "head", "d_model"],
            attributes={
                "coordinates": COORDS_ATTR,
                "position": "last",
                "definition": "attn.hook_z @ W_O per head (before any post-attention norm)",
            },
        )
    tok_arrays = {}
    if cfg.per_token_layers:
        n_tok_per = np.diff(offsets)
        T = int(offsets[-1])
        grp = root.create_group(store.TOKENS_GROUP)
        grp.create_array(
            "sample_index",
            data=np.repeat(np.arange(N, dtype=np.int32), n_tok_per),
            dimension_names=["token"],
        )
        grp.create_array(
            "position",
            data=np.concatenate([np.arange(t.first, len(t.ids), dtype=np.int32) for t in toks]),
            dimension_names=["token"],
        )
        grp.create_array(
            "token_id",
            data=np.concatenate([t.ids[t.first :] for t in toks]).astype(np.int32),
            dimension_names=["token"],
        )
        tok_chunk = max(1, min(T, 4096))
        for layer in cfg.per_token_layers:
            name = store.hook_name(layer, "hook_resid_post")
            tok_arrays[layer] = grp.create_array(
                name,
                shape=(T, d_model),
                chunks=(tok_chunk, d_model),
                dtype=cfg.store_dtype,
                compressors=comp,
                dimension_names=["token", "d_model"],
            )
    return arrays, tok_arrays


def _coords(rows: Sequence[dict]) -> dict[str, np.ndarray]:
    coords = {"sample": np.array([r["sample_id"] for r in rows])}
    coords.update({key: np.array([str(r[key]) for r in rows]) for key in store.SAMPLE_COORDS})
    return coords
