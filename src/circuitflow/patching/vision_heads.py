"""Head-level patching of a VLM's language model on image counterfactuals (patching phase).

The VLM reads ``[BOS] + image tokens``; the attribute probe reads the LM's residual stream at
the image tokens of one layer L (``blocks.{L}.hook_resid_post``). For each LM layer l <= L and
head h, the head's output ``z`` (``blocks.{l}.attn.hook_z``: the input of the attention output
projection, ``[batch, seq, n_heads, d_head]``) is set at the image tokens to the original
photo's, in the poor variant's run. The output projection is linear in ``z``, so this is
exactly patching the head's contribution ``z_h W_O[h]`` to the residual stream; the BOS
position sees only itself and is the same in both runs. Recovery is
``(r_patched - r_poor) / (r_good - r_poor)``, as for the hooks (:mod:`.vision`).

- Screen (train-split pairs): attribution patching, ``dr/dz . (z_good - z_poor)`` per head
  from one forward and one backward pass of the poor images, divided by ``r_good - r_poor``
  (a first-order estimate of the recovery); heads ranked per attribute by the |mean| over
  the valid pairs.
- Test (test-split pairs): the top ``vision.patching.heads.top_k`` heads of each attribute
  patched exactly; control: the same head moved by a seeded random difference with the
  Frobenius norm of ``z_good - z_poor`` of that head at the image tokens, per image
  (``control=random_difference_same_norm``).
- Attention mass: per head, the softmax mass the image-token queries put on image-token keys
  (the rest goes to BOS), on the originals of the test pairs; ``attn_image_uniform`` is what
  attending uniformly to every visible key would give.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float

from circuitflow import store
from circuitflow.core.hooks import StopForward, main_output, run_to_stop
from circuitflow.models import VisionModel, take_images, tokens_of
from circuitflow.models import readout as ro
from circuitflow.patching.engine import HEAD_SITE, chunks
from circuitflow.patching.vision import VisionPatchingError, _pair_rows
from circuitflow.workflow import schema_backed

CONTROL = "random_difference_same_norm"
METRIC = "image_head_patch_recovery"
PAIR_COLUMNS = [  # head_recovery.csv: the rows of :func:`run_head_patching`
    *("readout_kind", "hook", "layer", "site", "mode", "arm", "seed", "unit", "source"),
    *("attribute", "level", "r_poor", "r_good", "r_patched", "recovery", "valid", "head"),
]
HEAD_COLUMNS = [
    "attribute",
    "layer",
    "head",
    "attn_image",
    "attn_image_uniform",
    "screen_atp",
    "n_screen_pairs",
    "rank",
    "selected",
    "recovery",
    "control",
    "n_test_pairs",
]


@dataclass(frozen=True)
@schema_backed("vision", "patching", "heads")
class VisionHeadConfig:
    """``config['vision']['patching']['heads']``."""

    top_k: int
    random_seeds: int

    @classmethod
    def from_config(cls, section: Mapping) -> VisionHeadConfig:
        """From the ``vision`` config section (schema defaults already filled)."""
        heads = dict(section.get("patching", {}).get("heads", {}))
        return cls(
            top_k=heads.get("top_k", cls.top_k),
            random_seeds=heads.get("random_seeds", cls.random_seeds),
        )


@dataclass(frozen=True)
class HeadSite:
    """One LM layer's attention: the module, its output projection, heads x d_head."""

    layer: int
    attn: torch.nn.Module
    out_proj: torch.nn.Module
    n_heads: int
    d_head: int


def head_sites(vm: VisionModel, readout: str) -> list[HeadSite]:
    """The LM attention of every layer up to the readout's (``blocks.{L}.hook_resid_post``);
    empty when the readout is not an LM hook (a VLM's vision tower or projector)."""
    kinds = {h.name: h.kind for h in vm.hooks}
    if kinds.get(readout) != "lm":
        return []
    last, _ = store.parse_hook_name(readout)
    points = vm.points()
    sites = []
    for layer in range(last + 1):
        block = points[store.hook_name(layer, "hook_resid_post")]
        attn = getattr(block, "self_attn", None)
        if attn is not None and hasattr(attn, "o_proj"):  # Llama, Qwen, Gemma
            proj, d_head = attn.o_proj, int(attn.head_dim)
        elif attn is not None and hasattr(attn, "out_proj"):  # OPT (BLIP-2), BART-style
            proj, d_head = attn.out_proj, int(attn.head_dim)
        elif hasattr(getattr(block, "attn", None), "c_proj"):  # GPT-2
            attn = block.attn
            proj, d_head = attn.c_proj, int(attn.head_dim)
        else:
            raise VisionPatchingError(
                f"model {vm.name!r}: LM layer {layer} has no self_attn.o_proj / out_proj / "
                "attn.c_proj; set vision.patching.heads.top_k: 0"
            )
        width = getattr(proj, "in_features", None) or proj.weight.shape[0]
        sites.append(HeadSite(layer, attn, proj, int(width) // d_head, d_head))
    return sites


@contextlib.contextmanager
def z_hooks(sites: Sequence[HeadSite], fns: Mapping[int, Callable]) -> Iterator[None]:
    """Forward pre-hooks on the output projections: ``fns`` {layer: fn(z [B, T, H*d_head])
    -> z} replace each layer's ``hook_z`` (flattened over heads)."""
    handles = []
    try:
        for s in sites:
            if s.layer in fns:
                fn = fns[s.layer]
                handles.append(
                    s.out_proj.register_forward_pre_hook(
                        lambda m, args, fn=fn: (fn(args[0]), *args[1:])
                    )
                )
        yield
    finally:
        for h in handles:
            h.remove()


def capture_z(
    runner: ro.Runner, sites: Sequence[HeadSite], pixels
) -> tuple[dict[int, Float[torch.Tensor, "batch seq heads d_head"]], np.ndarray]:
    """({layer: z [B, T, H, d_head]}, pooled readout [B, d]) of one unedited pass."""
    zs = {}

    def keep(layer, site):
        def fn(z):
            zs[layer] = z.detach().clone().view(*z.shape[:2], site.n_heads, site.d_head)
            return z

        return fn

    with z_hooks(sites, {s.layer: keep(s.layer, s) for s in sites}):
        pooled = runner.read(pixels)
    return zs, pooled


def head_patch(
    good: Float[torch.Tensor, "batch seq heads d_head"],
    head: int,
    mask: Bool[torch.Tensor, "batch seq"],
) -> Callable:
    """Edit of one layer's z: head ``head`` set to ``good`` at the ``mask`` (image) positions."""

    def fn(z):
        z4 = z.view(*good.shape).clone()
        z4[:, :, head] = torch.where(mask[..., None], good[:, :, head].to(z4), z4[:, :, head])
        return z4.view(z.shape)

    return fn


def random_head_difference(
    good: Float[torch.Tensor, "batch seq heads d_head"],
    head: int,
    mask: Bool[torch.Tensor, "batch seq"],
    seed: int,
) -> Callable:
    """Control edit: head ``head`` moved at the ``mask`` positions by seeded Gaussian noise
    rescaled, per image, to the Frobenius norm of (good - z) of that head there."""

    def fn(z):
        z4 = z.view(*good.shape).clone()
        m = mask[..., None].to(z4)
        gen = torch.Generator().manual_seed(int(seed))
        noise = torch.randn(z4[:, :, head].shape, generator=gen, dtype=torch.float32).to(z4) * m
        diff = (good[:, :, head].to(z4) - z4[:, :, head]) * m
        scale = diff.flatten(1).norm(dim=1) / noise.flatten(1).norm(dim=1).clamp_min(1e-30)
        z4[:, :, head] = z4[:, :, head] + noise * scale[:, None, None]
        return z4.view(z.shape)

    return fn


def _pooled(runner: ro.Runner, x: torch.Tensor, mask) -> torch.Tensor:
    """Differentiable pooled readout [B, d] of a raw LM hook output (the rule of ``pool``)."""
    t = tokens_of("lm", x, mask)
    if runner.p == 0:
        return t.mean(1)
    if runner.p == 2:
        return t.amax(1)
    side = int(round(t.shape[1] ** 0.5))
    h, w = (side, side) if side * side == t.shape[1] else (1, t.shape[1])
    return t[:, (h // 2) * w + w // 2]


def atp_heads(
    runner: ro.Runner,
    sites: Sequence[HeadSite],
    readouts: Mapping[str, ro.Readout],
    chunk: Sequence[ro.ImagePair],
    poor_px,
    good_z: Mapping[int, torch.Tensor],
) -> tuple[Float[np.ndarray, "batch layer heads"], Float[np.ndarray, " batch"]]:
    """(first-order change of each pair's readout when one head's z is patched good -> poor,
    ``sum_{pos, d} dr/dz_poor * (z_good - z_poor)``; the poor readout r_poor), from one
    forward and one backward pass."""
    mask = runner.image_mask(len(chunk))
    point = runner.points[runner.readout]
    deltas, zs, out = {}, {}, {}

    def add(layer):
        def fn(z):
            zs[layer] = z.detach()
            deltas[layer] = torch.zeros_like(z, requires_grad=True)
            return z + deltas[layer]

        return fn

    def stop(module, args, o):
        out["x"] = main_output(o)
        raise StopForward

    handle = point.module.register_forward_hook(stop)
    try:
        with z_hooks(sites, {s.layer: add(s.layer) for s in sites}):
            run_to_stop(runner.vm.forward, poor_px, grad=True)
    finally:
        handle.remove()
    pooled = _pooled(runner, out["x"], mask)
    w = torch.as_tensor(np.stack([readouts[p.attribute].w for p in chunk])).to(pooled)
    b = torch.as_tensor([readouts[p.attribute].b for p in chunk]).to(pooled)
    r = (pooled * w).sum(-1) + b
    r.sum().backward()
    scores = []
    for s in sites:
        grad = deltas[s.layer].grad.view(*zs[s.layer].shape[:2], s.n_heads, s.d_head)
        diff = good_z[s.layer].to(grad) - zs[s.layer].view_as(grad)
        scores.append((grad * diff * mask[..., None, None]).sum((1, 3)))
    r_poor = r.detach().double().cpu().numpy()
    return torch.stack(scores, 1).double().cpu().numpy(), r_poor


@contextlib.contextmanager
def _eager(sites: Sequence[HeadSite]) -> Iterator[None]:
    """Attention weights computed explicitly (eager attention) while inside."""
    configs = {id(s.attn.config): s.attn.config for s in sites if hasattr(s.attn, "config")}
    before = {k: c._attn_implementation for k, c in configs.items()}
    try:
        for c in configs.values():
            c._attn_implementation = "eager"
        yield
    finally:
        for k, c in configs.items():
            c._attn_implementation = before[k]


def attention_mass(
    runner: ro.Runner, sites: Sequence[HeadSite], pixels
) -> Float[np.ndarray, "batch layer heads"]:
    """Per image and head: the attention mass of the image-token queries on image-token keys,
    averaged over the queries."""
    mask = runner.image_mask(pixels.shape[0])
    weights = {}

    def keep(layer):
        def fn(module, args, out):
            weights[layer] = out[1].detach()

        return fn

    handles = [s.attn.register_forward_hook(keep(s.layer)) for s in sites]
    try:
        with _eager(sites):
            runner.read(pixels)
    finally:
        for h in handles:
            h.remove()
    q = mask.to(torch.float64)
    out = []
    for s in sites:
        a = weights.get(s.layer)
        if a is None:
            raise VisionPatchingError(
                f"model {runner.vm.name!r}: layer {s.layer}'s attention returned no weights; "
                "set vision.patching.heads.top_k: 0"
            )
        on_image = (a.double() * q[:, None, None, :]).sum(-1)  # [B, H, query]
        out.append((on_image * q[:, None, :]).sum(-1) / q.sum(-1)[:, None])
    return torch.stack(out, 1).cpu().numpy()


def uniform_image_mass(mask: Bool[torch.Tensor, " seq"]) -> float:
    """Image-key mass of a query attending uniformly to every visible key, averaged over the
    image queries (causal attention)."""
    m = mask.to(torch.float64)
    visible_image = torch.cumsum(m, 0)
    visible = torch.arange(1, len(m) + 1, dtype=torch.float64)
    return float(((visible_image / visible) * m).sum() / m.sum())


# ---------------------------------------------------------------- the run
def _by_attribute(pairs: Sequence[ro.ImagePair]) -> dict[str, list[ro.ImagePair]]:
    out: dict[str, list[ro.ImagePair]] = {}
    for p in pairs:
        out.setdefault(p.attribute, []).append(p)
    return out


def screen_heads(
    vm: VisionModel,
    images,
    pairs: Sequence[ro.ImagePair],
    readouts: Mapping[str, ro.Readout],
    position: str,
    min_gap: float,
    batch_size: int = 64,
) -> pd.DataFrame:
    """AtP recovery estimates, one row per pair x layer x head: ``atp`` (readout change),
    ``atp_recovery`` (/ (r_good - r_poor)) and ``valid`` (the pair's gap >= min_gap x |level|)."""
    runner = ro.runner_for(vm, readouts, None, position)
    sites = head_sites(vm, runner.readout)
    rows = []
    for chunk in chunks(list(pairs), batch_size):
        poor_px = runner.pixels(take_images(images, np.array([p.poor for p in chunk])))
        good_px = runner.pixels(take_images(images, np.array([p.good for p in chunk])))
        good_z, good_pooled = capture_z(runner, sites, good_px)
        r_good = ro.read_levels(readouts, chunk, good_pooled)
        # r_poor through the same (no-grad) path as r_good: identical images give gap 0
        r_poor = ro.read_levels(readouts, chunk, runner.read(poor_px))
        atp, _ = atp_heads(runner, sites, readouts, chunk, poor_px, good_z)
        for i, p in enumerate(chunk):
            gap = r_good[i] - r_poor[i]
            valid = bool(gap != 0 and abs(gap) >= min_gap * abs(p.level))
            for j, s in enumerate(sites):
                for h in range(s.n_heads):
                    rows.append(
                        {
                            "unit": p.unit,
                            "source": p.source,
                            "attribute": p.attribute,
                            "layer": s.layer,
                            "head": h,
                            "atp": atp[i, j, h],
                            "atp_recovery": atp[i, j, h] / gap if gap != 0 else np.nan,
                            "valid": valid,
                        }
                    )
    return pd.DataFrame(rows)


def rank_heads(screen: pd.DataFrame, top_k: int) -> pd.DataFrame:
    """Per attribute and head: the mean AtP recovery over valid pairs, its rank by |mean| and
    whether it is among the ``top_k``."""
    v = screen[screen["valid"]] if len(screen) else screen
    if v.empty:
        cols = ["attribute", "layer", "head", "screen_atp", "n_screen_pairs", "rank", "selected"]
        return pd.DataFrame(columns=cols)
    g = v.groupby(["attribute", "layer", "head"])["atp_recovery"]
    t = g.agg(screen_atp="mean", n_screen_pairs="count").reset_index()
    size = t.assign(size=t["screen_atp"].abs()).groupby("attribute")["size"]
    t["rank"] = size.rank(ascending=False, method="first").astype(int)
    t["selected"] = t["rank"] <= top_k
    return t


def _stacked_edits(
    jobs: Sequence[tuple[int, int, str, int | str]],
    good_z: Mapping[int, torch.Tensor],
    mask: Bool[torch.Tensor, "batch seq"],
    base_seed: int,
) -> dict[int, Callable]:
    """{layer: edit} of one pass over ``len(jobs)`` copies of a batch of B pairs: copy j
    (rows j*B .. j*B+B-1) gets job j's (layer, head, arm, seed) edit and no other."""
    B = mask.shape[0]
    by_layer: dict[int, list[tuple[int, Callable]]] = {}
    for j, (layer, head, arm, seed) in enumerate(jobs):
        g = good_z[layer]
        if arm == "treatment":
            edit = head_patch(g, head, mask)
        else:
            s = (base_seed * 1000 + int(seed)) * 10007 + layer * 101 + head
            edit = random_head_difference(g, head, mask, s)
        by_layer.setdefault(layer, []).append((j, edit))

    def layer_fn(edits):
        def fn(z):
            z = z.clone()
            for j, edit in edits:
                z[j * B : (j + 1) * B] = edit(z[j * B : (j + 1) * B])
            return z

        return fn

    return {layer: layer_fn(edits) for layer, edits in by_layer.items()}


def run_head_patching(
    vm: VisionModel,
    images,
    pairs: Sequence[ro.ImagePair],
    readouts: Mapping[str, ro.Readout],
    selected: Mapping[str, Sequence[tuple[int, int]]],
    position: str,
    min_gap: float,
    random_seeds: int,
    base_seed: int = 0,
    batch_size: int = 64,
) -> list[dict]:
    """Exact patching of the ``selected`` {attribute: [(layer, head)]} heads on the valid
    ``pairs`` (|r_good - r_poor| >= min_gap x |level|; the others are not patched): one row
    per pair x head x arm (treatment; control seeds) with r_poor, r_good, r_patched, recovery,
    valid (the columns of :mod:`.vision` plus ``head``). The heads' passes of a batch run
    stacked, at most ``4 x batch_size`` rows per forward pass."""
    runner = ro.runner_for(vm, readouts, None, position)
    sites = head_sites(vm, runner.readout)
    by_layer = {s.layer: s for s in sites}
    rows = []
    for attribute, group in _by_attribute(pairs).items():
        heads = list(selected.get(attribute, ()))
        bad = [lh for lh in heads if lh[0] not in by_layer or lh[1] >= by_layer[lh[0]].n_heads]
        if bad:
            raise VisionPatchingError(f"head {bad[0]} is not a head before {runner.readout}")
        if not heads:
            continue
        jobs = [(lh[0], lh[1], "treatment", "") for lh in heads]
        jobs += [(lh[0], lh[1], "control", s) for lh in heads for s in range(random_seeds)]
        for chunk in chunks(group, batch_size):
            poor_px = runner.pixels(take_images(images, np.array([p.poor for p in chunk])))
            good_px = runner.pixels(take_images(images, np.array([p.good for p in chunk])))
            good_z, good_pooled = capture_z(runner, sites, good_px)
            r_good = ro.read_levels(readouts, chunk, good_pooled)
            r_poor = ro.read_levels(readouts, chunk, runner.read(poor_px))
            gap = np.abs(r_good - r_poor)
            keep = np.flatnonzero((gap > 0) & (gap >= min_gap * np.abs([p.level for p in chunk])))
            if not len(keep):
                continue
            idx = torch.as_tensor(keep)
            sub = [chunk[i] for i in keep]
            z_sub = {layer: z[idx] for layer, z in good_z.items()}
            mask = runner.image_mask(len(sub))
            per_pass = max(1, 4 * batch_size // len(sub))
            for part in chunks(jobs, per_pass):
                px = poor_px[idx].repeat(len(part), 1, 1, 1)
                edits = _stacked_edits(part, z_sub, mask, base_seed)
                with z_hooks(sites, edits):
                    pooled = runner.read(px)
                for j, (layer, head, arm, seed) in enumerate(part):
                    r = ro.read_levels(readouts, sub, pooled[j * len(sub) : (j + 1) * len(sub)])
                    hook = store.hook_name(layer, HEAD_SITE)
                    new = _pair_rows(
                        sub, hook, "head", arm, seed, r, r_poor[keep], r_good[keep], min_gap
                    )
                    rows += [{**row, "head": head} for row in new]
    return rows


def heads_table(
    ranked: pd.DataFrame,
    test_rows: Sequence[dict],
    mass: Float[np.ndarray, "layer heads"],
    uniform: float,
) -> pd.DataFrame:
    """heads.csv: per attribute x layer x head the attention mass on the image tokens, the
    screen's mean AtP recovery and rank, and the test pairs' mean recovery and control."""
    t = ranked.copy()
    t["attn_image"] = [mass[int(r.layer), int(r.head)] for r in t.itertuples()]
    t["attn_image_uniform"] = uniform
    test = pd.DataFrame(test_rows)
    if not test.empty:
        v = test[test["valid"]]
        keys = ["attribute", "layer", "head"]
        rec = v[v["arm"] == "treatment"].groupby(keys)["recovery"].agg(["mean", "count"])
        ctl = v[v["arm"] == "control"].groupby(keys)["recovery"].mean().rename("control")
        rec = rec.rename(columns={"mean": "recovery", "count": "n_test_pairs"}).join(ctl)
        t = t.merge(rec.reset_index(), on=keys, how="left")
    for c in HEAD_COLUMNS:
        if c not in t:
            t[c] = np.nan
    return t[HEAD_COLUMNS].sort_values(["attribute", "rank"]).reset_index(drop=True)


def head_measurement_rows(
    rows: Sequence[dict], dataset: str, model: str, position: str, readout: str
) -> list[dict]:
    """Exact head-patching rows -> store.MEASUREMENTS_FILE rows (valid pairs only): treatment
    = patched, control = same-norm random difference in the same head, baseline = unpatched
    (recovery 0); unit = source photo."""
    out = []
    for r in rows:
        if not r["valid"]:
            continue
        common = {
            "phase": "patching",
            "dataset": dataset,
            "model": model,
            "layer": r["layer"],
            "site": HEAD_SITE,
            "position": position,
            "condition": r["attribute"],
            "setting": f"head={r['head']} control={CONTROL} readout={readout}",
            "metric": METRIC,
            "unit": r["source"],
            "unit_kind": "photo",
        }
        out.append({**common, "arm": r["arm"], "value": float(r["recovery"])})
        if r["arm"] == "treatment":
            out.append({**common, "arm": "baseline", "value": 0.0})
    return out
