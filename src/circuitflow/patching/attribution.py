"""Attribution patching (AtP; Nanda 2023; Kramár et al. 2024, "AtP*"): a first-order estimate of
every patch of the grid from one forward and one backward pass per sentence and condition.

For a patch of node ``n`` (a hook output ``a``) from the source run into the destination run,

    lean_patched ~ lean_dest + sum_p (a_src[p'] - a_dest[p]) . d lean / d a_dest[p]

over the patched positions ``p`` (source positions ``p'`` aligned by role). Nodes:

- ``blocks.{l}.hook_resid_pre`` and ``blocks.{l}.hook_mlp_out`` at every site of
  :func:`~circuitflow.patching.residual.pair_sites`, both directions;
- ``blocks.{l}.attn.hook_z`` per query head (GQA: query heads, as TransformerLens names them)
  at the suffix, clean -> corrupted as exact head patching, and the head's zero / mean
  ablation on the clean run (all positions).

The metric is the patching lean (:func:`~circuitflow.patching.engine.lean`), differentiated
at the last token. A frame's neutral sentence is the corrupted run of every condition: its
forward pass serves them all, one backward pass per condition.

AtP* corrections. GradDrop (``grad_drop``): one more backward pass per layer ``l`` with the
gradient through layer ``l``'s attention and MLP outputs zeroed; the node's score is
``sum_l |estimate_l| / (L - 1)`` (Kramár et al., against cancelling paths), a magnitude for the
screen. The QK fix linearises only after an attention softmax that the patched node reaches
through queries and keys; the head nodes here are ``hook_z``, after their own softmax, so
their estimate needs none. The residual-site estimates do pass through downstream softmaxes:
:func:`agreement` measures per layer where the first-order estimate fails, against exact
patching on the validation frames.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy import stats as sps

from circuitflow import store
from circuitflow.core.errors import ConfigError
from circuitflow.core.hooks import StopForward, run_to_stop
from circuitflow.core.tokens import pad_id, right_pad
from circuitflow.patching.engine import (
    DIRECTIONS,
    HEAD_SITE,
    RESID_SITE,
    MetricTokens,
    PatchingError,
    lean_tensor,
    readout_weights,
    recovery,
)
from circuitflow.patching.residual import FramePair, pair_sites
from circuitflow.workflow import schema_backed

MLP_SITE = "hook_mlp_out"
NODES = {"resid": RESID_SITE, "mlp": MLP_SITE, "z": HEAD_SITE}
HEAD_PATCHES = ("head_patch", "zero_ablation", "mean_ablation")
PATCHES = (*DIRECTIONS, *HEAD_PATCHES)
SCREEN_CHOICES = ("top", "check")
ATTRIBUTION_FILE = "attribution.csv.gz"
SCREEN_FILE = "screen.csv"
ATTRIBUTION_COLUMNS = [
    "frame_id",
    "split",
    "condition",
    "clean_id",
    "corrupted_id",
    "patch",
    "node",
    "layer",
    "head",
    "hook",
    "position",
    "n_positions",
    "lean_clean",
    "lean_corrupted",
    "delta",
    "lean_patched",
    "recovery",
    "small_denominator",
    "grad_drop_score",
]


@dataclass(frozen=True)
@schema_backed("patching", "attribution")
class AttributionConfig:
    """``config['patching']['attribution']``: the AtP screen and what exact patching runs."""

    enabled: bool
    screen_split: str
    screen_frames: int
    top_k_sites: int
    top_k_heads: int
    check_sites: int
    check_heads: int
    validation_frames: int
    recall_top: int
    grad_drop: bool

    def __post_init__(self):
        if self.screen_split not in ("train", "test"):
            raise ConfigError(
                f"patching.attribution.screen_split: {self.screen_split!r} not in train, test"
            )
        for key in ("screen_frames", "top_k_sites", "top_k_heads", "recall_top"):
            if getattr(self, key) < 1:
                raise ConfigError(f"patching.attribution.{key}: must be >= 1")
        for key in ("check_sites", "check_heads", "validation_frames"):
            if getattr(self, key) < 0:
                raise ConfigError(f"patching.attribution.{key}: must be >= 0")

    @classmethod
    def from_config(cls, section: Mapping | None) -> AttributionConfig:
        return cls(**dict(section or {}))


# ---------------------------------------------------------------- gradient passes
class GradientRunner:
    """Forward passes with autograd that capture every node of every layer and stop at
    ``ln_final.hook_out``; :meth:`gradients` differentiates a condition's lean."""

    def __init__(self, bridge, metric: MetricTokens, model_name: str = "model"):
        self.bridge, self.metric, self.model_name = bridge, metric, model_name
        self.device = next(bridge.parameters()).device
        self.n_layers, self.n_heads = bridge.cfg.n_layers, bridge.cfg.n_heads
        self.W_U, self.b_U = readout_weights(bridge, metric.flat_ids(), self.device)
        self.captured: dict = {}
        self.drop: int | None = None
        self.logits = None

    def _capture(self, key, x):
        y = x.clone()
        if not y.requires_grad:  # weights without grad: the first node starts the graph
            y.requires_grad_(True)
        if key[0] == "z" and y.dim() == 3:
            y4 = y.reshape(*y.shape[:2], self.n_heads, -1)
            self.captured[key] = y4
            return y4.reshape(y.shape)
        self.captured[key] = y
        return y

    def _gate(self, layer, x):
        """The residual contribution of ``layer``: its gradient is zeroed while GradDrop
        drops that layer."""
        y = x.clone()
        if y.requires_grad:
            y.register_hook(lambda g, layer=layer: torch.zeros_like(g) if self.drop == layer else g)
        return y

    def _readout(self, x):
        h = x[torch.arange(x.shape[0], device=x.device), self.last].float()
        out = h @ self.W_U
        self.logits = out if self.b_U is None else out + self.b_U
        raise StopForward

    def hooks(self, grad_drop: bool):
        out = []
        for layer in range(self.n_layers):
            for node, site in NODES.items():
                out.append(
                    (store.hook_name(layer, site), lambda x, k=(node, layer): self._capture(k, x))
                )
            if grad_drop:
                for site in ("hook_attn_out", MLP_SITE):
                    out.append(
                        (store.hook_name(layer, site), lambda x, layer=layer: self._gate(layer, x))
                    )
        out.append(("ln_final.hook_out", self._readout))
        return out

    def forward_batch(self, sentences: Sequence[np.ndarray]) -> dict:
        """Right-padded sentences ``[ids [T_r]]`` in one pass: {"nodes": {(node, layer):
        tensor [B, T, ...]}, "leans": tensor [B, n_conditions], "lengths": [T_r]}, with the
        graph kept for :meth:`gradients_batch`. Rows never interact (causal attention, pads
        after the last real token), so each row's gradient is its own."""
        ids, lengths = right_pad(list(sentences), pad_id(self.bridge.tokenizer))
        self.captured, self.logits = {}, None
        self.last = torch.as_tensor(lengths, device=self.device) - 1
        run_to_stop(self.bridge, ids.to(self.device), grad=True, return_type=None)
        if self.logits is None:
            raise PatchingError(f"model {self.model_name!r}: hook ln_final.hook_out never fired")
        leans = lean_tensor(self.logits.double(), self.metric)
        return {"nodes": dict(self.captured), "leans": leans, "lengths": lengths}

    def forward(self, ids: np.ndarray) -> dict:
        """One sentence ``ids [T]`` (:meth:`forward_batch` of one row)."""
        return self.forward_batch([ids])

    def gradients_batch(
        self, run: dict, conditions: Sequence[int], drop: int | None = None
    ) -> list[dict]:
        """Per row r: {(node, layer): d lean_{conditions[r]} / d node [T_r, ...]} (float64,
        CPU), from one backward pass of the sum over rows; ``drop``: GradDrop's layer."""
        keys = list(run["nodes"])
        rows = torch.arange(len(conditions), device=self.device)
        target = run["leans"][rows, torch.as_tensor(list(conditions), device=self.device)].sum()
        self.drop = drop
        try:
            grads = torch.autograd.grad(
                target, [run["nodes"][k] for k in keys], retain_graph=True, allow_unused=True
            )
        finally:
            self.drop = None
        out = []
        for r, n in enumerate(run["lengths"][: len(conditions)]):
            row = {}
            for k, g in zip(keys, grads, strict=True):
                shape = (n, *run["nodes"][k].shape[2:])
                row[k] = (
                    torch.zeros(shape, dtype=torch.float64)
                    if g is None
                    else g[r, :n].double().cpu()
                )
            out.append(row)
        return out

    def gradients(self, run: dict, ci: int, drop: int | None = None) -> dict:
        """{(node, layer): d lean_ci / d node [T, ...]} of a one-row run."""
        return self.gradients_batch(run, [ci], drop)[0]


def detached(run: dict, row: int = 0) -> dict:
    """The nodes of row ``row`` of a forward pass as float64 CPU tensors [T_r, ...] (no
    graph)."""
    n = run["lengths"][row]
    return {k: v[row, :n].detach().double().cpu() for k, v in run["nodes"].items()}


# ---------------------------------------------------------------- estimates of one pair
def _stack(values: Mapping, node: str, n_layers: int) -> torch.Tensor:
    return torch.stack([values[(node, layer)] for layer in range(n_layers)])


def site_deltas(
    src: Mapping, dest: Mapping, grad: Mapping, pair: FramePair, direction: str, n_layers: int
) -> list[tuple[str, str, int, np.ndarray]]:
    """[(node, site position, n positions, delta [L])] for ``resid`` and ``mlp`` at every site of
    ``pair`` in ``direction``: sum over the site's positions of (src - dest) . grad."""
    sites, _ = pair_sites(pair, direction)
    out = []
    for node in ("resid", "mlp"):
        a_src, a_dest, g = (_stack(v, node, n_layers) for v in (src, dest, grad))
        for site in sites:
            d = (a_src[:, site.src] - a_dest[:, site.dest]) * g[:, site.dest]
            out.append((node, site.position, len(site.dest), d.sum(dim=(1, 2)).numpy()))
    return out


def head_deltas(
    clean: Mapping,
    corrupted: Mapping,
    grad_corrupted: Mapping | None,
    grad_clean: Mapping | None,
    pair: FramePair,
    mean_z: Mapping[int, torch.Tensor],
    n_layers: int,
) -> dict[str, np.ndarray]:
    """{patch: delta [L, H]}: the head's ``hook_z`` patched clean -> corrupted at the suffix
    (``head_patch``), and set to zero / its neutral mean at every position of the clean run."""
    out = {}
    z_clean = _stack(clean, "z", n_layers)  # [L, T, H, dh]
    if grad_corrupted is not None and pair.n_suffix:
        Td, Ts = len(pair.corrupted.ids), len(pair.clean.ids)
        dpos, spos = np.arange(Td - pair.n_suffix, Td), np.arange(Ts - pair.n_suffix, Ts)
        z_corr, g = _stack(corrupted, "z", n_layers), _stack(grad_corrupted, "z", n_layers)
        out["head_patch"] = ((z_clean[:, spos] - z_corr[:, dpos]) * g[:, dpos]).sum((1, 3))
    if grad_clean is not None:
        g = _stack(grad_clean, "z", n_layers)
        out["zero_ablation"] = (-z_clean * g).sum((1, 3))
        if mean_z:
            m = torch.stack([mean_z[layer].double() for layer in range(n_layers)])  # [L, H, dh]
            out["mean_ablation"] = ((m[:, None] - z_clean) * g).sum((1, 3))
    return {k: v.numpy() for k, v in out.items()}


# ---------------------------------------------------------------- the grid
def attribute_pairs(
    runner: GradientRunner,
    pairs: Sequence[FramePair],
    split_of: Mapping[str, str],
    mean_z: Mapping[int, torch.Tensor],
    min_denominator: float = 0.5,
    grad_drop: bool = False,
    progress=None,
) -> pd.DataFrame:
    """AtP estimates of every node of every pair (:data:`ATTRIBUTION_COLUMNS`): per pair the
    residual / MLP sites in both directions and every head's patch and ablations.
    ``split_of``: frame id -> split."""
    ci_of = {c: i for i, c in enumerate(runner.metric.conditions)}
    L, H = runner.n_layers, runner.n_heads
    rows = []
    by_frame: dict[str, list[FramePair]] = {}
    for pair in pairs:
        by_frame.setdefault(pair.frame_id, []).append(pair)
    for frame_id, frame in by_frame.items():
        # one batch per frame: each pair's clean and corrupted sentence, the corrupted one
        # once per condition, so that one backward pass gives every pair's gradients
        sentences, conditions = [], []
        for pair in frame:
            sentences += [pair.clean.ids, pair.corrupted.ids]
            conditions += [ci_of[pair.condition]] * 2
        run = runner.forward_batch(sentences)
        row_of = {}
        for r, pair in enumerate(frame):
            row_of.setdefault(pair.clean_id, 2 * r)
            row_of.setdefault(pair.corrupted_id, 2 * r + 1)
        acts = {sid: detached(run, r) for sid, r in row_of.items()}
        leans = {sid: run["leans"][r].detach().cpu().numpy() for sid, r in row_of.items()}
        drops = [None, *range(L)] if grad_drop else [None]
        grads = {drop: runner.gradients_batch(run, conditions, drop) for drop in drops}
        for r, pair in enumerate(frame):
            ci = ci_of[pair.condition]
            lc, lx = float(leans[pair.clean_id][ci]), float(leans[pair.corrupted_id][ci])
            base = {
                "frame_id": frame_id,
                "split": split_of.get(frame_id, ""),
                "condition": pair.condition,
                "clean_id": pair.clean_id,
                "corrupted_id": pair.corrupted_id,
                "lean_clean": lc,
                "lean_corrupted": lx,
            }
            per_drop = {}
            for drop in drops:
                g_clean, g_corr = grads[drop][2 * r], grads[drop][2 * r + 1]
                est = {}
                for direction, (src, dest, g) in {
                    DIRECTIONS[0]: (pair.clean_id, pair.corrupted_id, g_corr),
                    DIRECTIONS[1]: (pair.corrupted_id, pair.clean_id, g_clean),
                }.items():
                    for node, pos, n, d in site_deltas(
                        acts[src], acts[dest], g, pair, direction, L
                    ):
                        est.setdefault((direction, node, pos), []).append((n, d))
                heads = head_deltas(
                    acts[pair.clean_id], acts[pair.corrupted_id], g_corr, g_clean, pair, mean_z, L
                )
                for patch, d in heads.items():
                    est[(patch, "z", "")] = [(pair.n_suffix if patch == "head_patch" else 0, d)]
                per_drop[drop] = est
            rows += _pair_rows(base, per_drop, L, H, grad_drop)
        if progress is not None:
            progress.update(len(frame))
    table = pd.DataFrame(rows, columns=[c for c in ATTRIBUTION_COLUMNS if c != "recovery"])
    if len(table):
        rec, small = recovery(
            table["lean_patched"], table["lean_clean"], table["lean_corrupted"], min_denominator
        )
        ablation = table["patch"].isin(HEAD_PATCHES[1:])
        table["recovery"] = np.where(ablation, 1.0 - rec, rec)  # ablations: the effect
        table["small_denominator"] = small
    else:
        table["recovery"] = []
    return table[ATTRIBUTION_COLUMNS]


def _pair_rows(base: dict, per_drop: dict, L: int, H: int, grad_drop: bool) -> list[dict]:
    """Rows of one pair; a site name patched at several tokens (suffix_mid) gets one row each."""
    rows = []
    est = per_drop[None]
    for (patch, node, position), items in est.items():
        for i, (n, d) in enumerate(items):
            gd = None
            if grad_drop:
                gd = sum(np.abs(per_drop[drop][(patch, node, position)][i][1]) for drop in range(L))
                gd = gd / max(L - 1, 1)
            dest_lean = base["lean_corrupted"] if patch in (DIRECTIONS[0], "head_patch") else (
                base["lean_clean"]
            )  # fmt: skip
            if node == "z":
                cells = [(layer, h, d[layer, h], gd[layer, h] if gd is not None else np.nan)
                         for layer in range(L) for h in range(H)]  # fmt: skip
            else:
                cells = [(layer, -1, d[layer], gd[layer] if gd is not None else np.nan)
                         for layer in range(L)]  # fmt: skip
            for layer, head, delta, score in cells:
                rows.append(
                    {
                        **base,
                        "patch": patch,
                        "node": node,
                        "layer": layer,
                        "head": head,
                        "hook": store.hook_name(layer, NODES[node]),
                        "position": position or ("suffix" if patch == "head_patch" else "all"),
                        "n_positions": n,
                        "delta": float(delta),
                        "lean_patched": dest_lean + float(delta),
                        "small_denominator": False,
                        "grad_drop_score": float(score),
                    }
                )
    return rows


# ---------------------------------------------------------------- the screen
def screen(
    table: pd.DataFrame,
    cfg: AttributionConfig,
    seed: int = 0,
) -> pd.DataFrame:
    """Candidates for exact patching from the AtP rows of the screen split: residual sites
    (layer x position, direction clean_to_corrupted) and heads (layer x head, head_patch),
    ranked by the mean |estimated recovery| over the screen's pairs, a pair without the site
    counting 0 (or the GradDrop score); the top
    ``top_k_*`` (``chosen`` top) plus a seeded random ``check_*`` of the rest (``check``)."""
    t = table[(table["split"] == cfg.screen_split) & ~table["small_denominator"].astype(bool)]
    score = "grad_drop_score" if cfg.grad_drop else "abs_recovery"
    t = t.assign(abs_recovery=t["recovery"].abs())
    out = []
    gen = np.random.default_rng([int(seed), 12])
    for kind, patch, node, keys, k_top, k_check in (
        ("site", DIRECTIONS[0], "resid", ["layer", "position"], cfg.top_k_sites, cfg.check_sites),
        ("head", "head_patch", "z", ["layer", "head"], cfg.top_k_heads, cfg.check_heads),
    ):
        part = t[(t["patch"] == patch) & (t["node"] == node)]
        # a site patched at several tokens of a pair (suffix_mid) counts once per pair
        per_pair = part.groupby([*keys, "clean_id"], sort=True)[[score, "recovery"]].mean()
        g = per_pair.reset_index().groupby(keys, sort=True)
        ranked = g.agg(
            score=(score, "sum"),
            mean_recovery=("recovery", "mean"),
            n_pairs=("recovery", "size"),
        ).reset_index()
        # per pair of the screen, a site a pair lacks (phrase tokens of unequal phrases) as 0
        ranked["score"] /= max(part["clean_id"].nunique(), 1)
        ranked = ranked.sort_values(["score", *keys], ascending=[False, True, True])
        ranked["rank"] = np.arange(1, len(ranked) + 1)
        ranked["chosen"] = ""
        ranked.iloc[: min(k_top, len(ranked)), ranked.columns.get_loc("chosen")] = "top"
        rest = np.flatnonzero(ranked["chosen"].to_numpy() == "")
        pick = gen.choice(rest, size=min(k_check, len(rest)), replace=False) if len(rest) else []
        ranked.iloc[np.sort(pick), ranked.columns.get_loc("chosen")] = "check"
        out.append(ranked.assign(kind=kind, node=node, patch=patch))
    frame = pd.concat(out, ignore_index=True)
    if "head" not in frame:
        frame["head"] = -1
    frame["head"] = frame["head"].fillna(-1).astype(int)
    frame["position"] = frame["position"].fillna("suffix")
    cols = ["kind", "node", "patch", "layer", "position", "head", "score", "mean_recovery"]
    return frame[[*cols, "n_pairs", "rank", "chosen"]]


def chosen_sites(screen_table: pd.DataFrame) -> set[tuple[int, str]]:
    """{(layer, position)} of the residual sites exact patching runs."""
    s = screen_table[(screen_table["kind"] == "site") & screen_table["chosen"].isin(SCREEN_CHOICES)]
    return {(int(r.layer), str(r.position)) for r in s.itertuples()}


def chosen_heads(screen_table: pd.DataFrame) -> list[tuple[int, int]]:
    """[(layer, head)] exact head patching / ablation runs, in (layer, head) order."""
    s = screen_table[(screen_table["kind"] == "head") & screen_table["chosen"].isin(SCREEN_CHOICES)]
    return sorted({(int(r.layer), int(r.head)) for r in s.itertuples()})


# ---------------------------------------------------------------- agreement with exact
AGREEMENT_COLUMNS = [
    "grid",
    "scope",
    "n",
    "spearman",
    "spearman_p",
    "recall",
    "recall_k",
    "recall_top",
    "note",
]


def agreement(
    atp: pd.DataFrame,
    residual: pd.DataFrame,
    heads: pd.DataFrame,
    top_k_heads: int,
    recall_top: int = 10,
    screen_table: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """AtP vs exact patching on the same pairs (:data:`AGREEMENT_COLUMNS`).

    Residual grid: Spearman over every pair x direction x layer x site, and per layer (where
    the first-order estimate fails); heads: over every pair x head and over the heads' mean
    recovery, and the recall of the exact top-``recall_top`` heads (mean recovery) in the AtP
    top-``top_k_heads`` on the same pairs and, with ``screen_table``, in the screen's choice
    (other pairs: the screen split)."""
    rows = []
    keys = ["clean_id", "direction", "layer", "position", "token_index"]
    a = atp[(atp["node"] == "resid") & atp["patch"].isin(DIRECTIONS)].rename(
        columns={"patch": "direction"}
    )
    r = residual.copy()
    # several tokens under one site name: match them in order within the pair
    for frame in (a, r):
        frame["token_index"] = frame.groupby(keys[:-1]).cumcount()
    m = r.merge(a[[*keys, "recovery"]], on=keys, suffixes=("_exact", "_atp"))
    m = m[~m["small_denominator"].astype(bool)]
    rows.append(_spearman("residual", "all", m["recovery_atp"], m["recovery_exact"]))
    for layer, part in m.groupby("layer", sort=True):
        rows.append(_spearman("residual", f"layer={layer}", part["recovery_atp"],
                              part["recovery_exact"]))  # fmt: skip
    hk = ["clean_id", "layer", "head"]
    ah = atp[atp["patch"] == "head_patch"][[*hk, "recovery"]]
    mh = heads.merge(ah, on=hk, suffixes=("_exact", "_atp"))
    mh = mh[~mh["small_denominator"].astype(bool)]
    rows.append(_spearman("heads", "all", mh["recovery_atp"], mh["recovery_exact"]))
    means = mh.groupby(["layer", "head"])[["recovery_atp", "recovery_exact"]].mean()
    rows.append(_spearman("heads", "head_means", means["recovery_atp"], means["recovery_exact"]))
    if len(means):
        exact_top = set(means["recovery_exact"].nlargest(recall_top).index)
        atp_top = set(means["recovery_atp"].nlargest(top_k_heads).index)
        rows.append(_recall("heads", "same_pairs", exact_top, atp_top, top_k_heads, recall_top))
        if screen_table is not None:
            picked = set(chosen_heads(screen_table[screen_table["chosen"] == "top"]))
            rows.append(_recall("heads", "screen", exact_top, picked, top_k_heads, recall_top))
    return pd.DataFrame(rows, columns=AGREEMENT_COLUMNS)


def _spearman(grid: str, scope: str, x, y) -> dict:
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    note = ""
    if ok.sum() < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        rho, p, note = np.nan, np.nan, "fewer than 3 varying values"
    else:
        res = sps.spearmanr(x[ok], y[ok])
        rho, p = float(res.statistic), float(res.pvalue)
    return {"grid": grid, "scope": scope, "n": int(ok.sum()), "spearman": rho,
            "spearman_p": p, "recall": np.nan, "recall_k": np.nan, "recall_top": np.nan,
            "note": note}  # fmt: skip


def _recall(grid: str, scope: str, exact_top: set, picked: set, k: int, top: int) -> dict:
    hit = len(exact_top & picked) / max(len(exact_top), 1)
    return {"grid": grid, "scope": f"recall:{scope}", "n": len(exact_top), "spearman": np.nan,
            "spearman_p": np.nan, "recall": hit, "recall_k": k, "recall_top": top,
            "note": ""}  # fmt: skip
