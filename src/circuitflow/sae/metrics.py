"""Evaluating an SAE: reconstruction metrics, CE-loss recovered and the feature table.

Reconstruction metrics follow SAELens's definitions (explained variance, MSE, L0, dead
features) on tokens x [n_tokens, d_in]. CE-loss recovered splices the SAE's reconstruction
into a TransformerLens bridge at one hook and compares next-token losses with the clean and
the zero-ablated forward. The feature table ranks each feature's per-sample max activation
by label (AUROC against the baseline label) and lists its top prompts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from scipy.stats import rankdata

from circuitflow.sae.base import SAE, SAEError

TOP_N = 3  # top activating prompts per feature in the feature table


# ---------------------------------------------------------------- metrics
@dataclass(frozen=True)
class ReconstructionMetrics:
    """SAELens definitions: explained_variance = 1 - sum ||x - x_hat||^2 / sum ||x - mean x||^2;
    mse = mean over tokens and dims of (x - x_hat)^2 (raw units); l0 = mean active features."""

    n_tokens: int
    l0: float
    explained_variance: float
    mse: float
    dead_fraction: float
    n_dead: int
    fire_rate: np.ndarray  # [d_sae] fraction of tokens each feature fires on

    def as_dict(self, prefix: str = "") -> dict:
        return {
            f"{prefix}n_tokens": self.n_tokens,
            f"{prefix}l0": self.l0,
            f"{prefix}explained_variance": self.explained_variance,
            f"{prefix}mse": self.mse,
            f"{prefix}dead_fraction": self.dead_fraction,
            f"{prefix}n_dead_features": self.n_dead,
        }


def reconstruction_metrics(
    sae: SAE,
    x: Float[np.ndarray, "n d_in"] | Float[torch.Tensor, "n d_in"],
    chunk: int = 4096,
) -> ReconstructionMetrics:
    """L0, explained variance, MSE and dead features of ``sae`` on tokens x."""
    x = torch.as_tensor(np.asarray(x, dtype=np.float32))
    if len(x) == 0:
        raise SAEError("no tokens to evaluate the SAE on")
    err2 = torch.zeros((), dtype=torch.float64)
    l0 = torch.zeros((), dtype=torch.float64)
    fires = torch.zeros(sae.cfg.d_sae, dtype=torch.float64)
    for i in range(0, len(x), chunk):
        xb = x[i : i + chunk]
        f = sae.encode_batch(xb)
        err2 += (sae.decode(f) - xb).double().pow(2).sum()
        active = f > 0
        l0 += active.sum()
        fires += active.sum(0)
    xd = x.double()
    total = (xd - xd.mean(0)).pow(2).sum()
    n = len(x)
    fire_rate = (fires / n).numpy()
    n_dead = int((fires == 0).sum())
    return ReconstructionMetrics(
        n_tokens=n,
        l0=float(l0 / n),
        explained_variance=float(1 - err2 / total) if total > 0 else float("nan"),
        mse=float(err2 / (n * x.shape[1])),
        dead_fraction=n_dead / sae.cfg.d_sae,
        n_dead=n_dead,
        fire_rate=fire_rate,
    )


# ---------------------------------------------------------------- CE-loss recovered
@dataclass(frozen=True)
class CELossResult:
    """Next-token LM loss with the hook clean, replaced by the SAE, and zero-ablated."""

    ce_loss_clean: float
    ce_loss_sae: float
    ce_loss_zero: float
    ce_loss_recovered: float  # (zero - sae) / (zero - clean)
    n_prompts: int
    n_predictions: int

    def as_dict(self) -> dict:
        return asdict(self)


def ce_loss_recovered(
    bridge,
    token_ids: Sequence[Int[np.ndarray, " seq"]],
    hook: str,
    reconstruct: Callable[[Float[torch.Tensor, "n d_model"]], Float[torch.Tensor, "n d_model"]],
    first: int = 1,
    batch_size: int = 16,
) -> CELossResult:
    """Splice ``reconstruct`` into ``bridge`` at ``hook`` and compare next-token losses.

    token_ids: one int array per prompt (BOS included when the model prepends it); the hook's
    output at positions ``first:`` (all but BOS) is replaced by ``reconstruct(x)`` (x [n,
    d_model]) or by zeros; positions before ``first`` are left unchanged. Loss: mean
    cross-entropy over every next-token prediction of every prompt (token-weighted).
    """
    mode = {"value": "clean"}

    def splice(x, hook):
        if mode["value"] == "clean":
            return None
        x = x.clone()
        tail = x[:, first:]
        if mode["value"] == "zero":
            x[:, first:] = 0
        else:
            flat = tail.reshape(-1, tail.shape[-1]).float()
            x[:, first:] = reconstruct(flat).reshape(tail.shape).to(x.dtype)
        return x

    device = next(bridge.parameters()).device
    pad = bridge.tokenizer.pad_token_id if bridge.tokenizer.pad_token_id is not None else 0
    order = sorted(range(len(token_ids)), key=lambda i: (len(token_ids[i]), i))
    sums = {"clean": 0.0, "sae": 0.0, "zero": 0.0}
    n_pred = 0
    with torch.no_grad(), bridge.hooks(fwd_hooks=[(hook, splice)]):
        for b0 in range(0, len(order), batch_size):
            sel = [np.asarray(token_ids[i]) for i in order[b0 : b0 + batch_size]]
            lengths = torch.tensor([len(t) for t in sel])
            if int(lengths.min()) < 2:
                raise SAEError("every prompt needs at least 2 tokens for a next-token loss")
            P = int(lengths.max())
            tokens = torch.full((len(sel), P), pad, dtype=torch.long)
            for i, t in enumerate(sel):
                tokens[i, : len(t)] = torch.from_numpy(t.astype(np.int64))
            mask = torch.arange(P - 1)[None, :] < (lengths - 1)[:, None]
            targets = tokens[:, 1:]
            n_pred += int(mask.sum())
            for name in sums:
                mode["value"] = name
                logits = bridge(tokens.to(device), return_type="logits")[:, :-1].float().cpu()
                ce = F.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
                ).reshape(targets.shape)
                sums[name] += float((ce * mask).sum().double())
                del logits
    mode["value"] = "clean"
    losses = {name: value / n_pred for name, value in sums.items()}
    gap = losses["zero"] - losses["clean"]
    return CELossResult(
        ce_loss_clean=losses["clean"],
        ce_loss_sae=losses["sae"],
        ce_loss_zero=losses["zero"],
        ce_loss_recovered=(losses["zero"] - losses["sae"]) / gap if gap != 0 else float("nan"),
        n_prompts=len(token_ids),
        n_predictions=n_pred,
    )


# ---------------------------------------------------------------- feature table
def per_sample_max(
    f: Float[torch.Tensor, "n_tokens d_sae"],
    sample_index: Int[np.ndarray, " n_tokens"],
    n_samples: int,
) -> Float[torch.Tensor, "n_samples d_sae"]:
    """Max over each sample's tokens (0 for a sample without tokens)."""
    out = torch.zeros(n_samples, f.shape[1], dtype=f.dtype)
    index = torch.as_tensor(np.asarray(sample_index, dtype=np.int64))[:, None].expand_as(f)
    return out.scatter_reduce_(0, index, f, reduce="amax", include_self=True)


def auroc(scores: Float[np.ndarray, "n m"], positive: np.ndarray) -> Float[np.ndarray, " m"]:
    """Column-wise ROC AUC of scores [n, m] for the boolean labels ``positive`` [n].

    The Mann-Whitney form with average ranks for ties, equal to sklearn's roc_auc_score.
    """
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return np.full(scores.shape[1], np.nan)
    ranks = rankdata(scores, axis=0)
    return (ranks[positive].sum(0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def feature_table(
    f: Float[torch.Tensor, "n_tokens d_sae"],
    sample_index: Int[np.ndarray, " n_tokens"],
    token_ids: Int[np.ndarray, " n_tokens"],
    samples: Sequence[dict],
    labels: Sequence[str],
    baseline: str,
    decode: Callable[[int], str],
    top_n: int = TOP_N,
) -> pd.DataFrame:
    """Tidy feature x label table over the evaluated samples.

    f [n_tokens, d_sae]: feature activations of the tokens; sample_index [n_tokens] indexes
    ``samples`` (dicts with sample_id, label, text); token_ids [n_tokens].
    Per feature and label: n_samples, mean of the per-sample max activation, AUROC of the
    per-sample max for that label vs ``baseline`` (empty for the baseline row), the fraction of
    the label's samples where the feature fires; per feature: fire_rate over all tokens and the
    ``top_n`` prompts with the highest per-sample max (sample id, label, decoded top token,
    activation, text).
    """
    n_samples = len(samples)
    sample_index = np.asarray(sample_index, dtype=np.int64)
    smax = per_sample_max(f, sample_index, n_samples).numpy()  # [sample, feature]
    sample_labels = np.array([s["label"] for s in samples])
    d_sae = f.shape[1]
    fire_rate = (f > 0).double().mean(0).numpy() if len(f) else np.zeros(d_sae)

    # top prompts per feature, and the token where each reaches its max
    top = np.argsort(-smax, axis=0, kind="stable")[:top_n]  # [top_n, feature]
    order = np.argsort(sample_index, kind="stable")
    starts = np.searchsorted(sample_index[order], np.arange(n_samples))
    ends = np.searchsorted(sample_index[order], np.arange(n_samples), side="right")
    fv = f.numpy()
    top_cols: dict[str, list] = {}
    for r in range(top_n):
        ids, labs, toks, acts, texts = [], [], [], [], []
        for j in range(d_sae):
            s = int(top[r, j]) if r < len(top) else -1
            value = float(smax[s, j]) if s >= 0 else 0.0
            if s < 0 or value <= 0:
                ids.append(""), labs.append(""), toks.append(""), acts.append(np.nan)
                texts.append("")
                continue
            rows = order[starts[s] : ends[s]]
            t = rows[int(np.argmax(fv[rows, j]))]
            ids.append(samples[s]["sample_id"])
            labs.append(samples[s]["label"])
            toks.append(decode(int(token_ids[t])))
            acts.append(value)
            texts.append(samples[s]["text"])
        n = r + 1
        top_cols[f"top{n}_sample_id"] = ids
        top_cols[f"top{n}_label"] = labs
        top_cols[f"top{n}_token"] = toks
        top_cols[f"top{n}_activation"] = acts
        top_cols[f"top{n}_text"] = texts

    frames = []
    base = sample_labels == baseline
    for label in labels:
        sel = sample_labels == label
        if label == baseline:
            au = np.full(d_sae, np.nan)
        else:
            keep = sel | base
            au = auroc(smax[keep], sel[keep])
        frame = {
            "feature": np.arange(d_sae),
            "label": label,
            "n_samples": int(sel.sum()),
            "mean_max_activation": smax[sel].mean(0) if sel.any() else np.full(d_sae, np.nan),
            "auroc_vs_baseline": au,
            "sample_fire_rate": (smax[sel] > 0).mean(0) if sel.any() else np.full(d_sae, np.nan),
            "fire_rate": fire_rate,
        }
        frames.append(pd.DataFrame({**frame, **top_cols}))
    table = pd.concat(frames, ignore_index=True)
    return table.sort_values("feature", kind="stable", ignore_index=True)  # labels as given


def choose_prompts(n: int, limit: int | None, seed: int) -> np.ndarray:
    """Sorted indices of ``limit`` of ``n`` items drawn without replacement (all if None/>= n)."""
    if limit is None or limit >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=limit, replace=False))


def feature_summaries(
    features: pd.DataFrame, metrics: Mapping, baseline: str, top_n: int
) -> pd.DataFrame:
    """features.csv (+ metrics.json) -> ``summaries.csv`` rows (design ``auroc``): per emotion,
    the ``top_n`` features by |AUROC - 0.5| of their per-sample max activation (condition vs
    baseline samples, test split), each tested against 0.5. Every live feature (firing in
    either group) is a hypothesis of the family: ``n_family_part`` counts them for this SAE,
    so keeping only the top rows does not weaken the correction."""
    f = features
    base = f[f["label"] == baseline].set_index("feature")
    dataset, model, hook = metrics["dataset"], metrics["model"], metrics["hook"]
    layer, site = (
        (int(hook.split(".")[1]), hook.split(".", 2)[2])
        if hook.startswith("blocks.")
        else (pd.NA, hook)
    )
    arch = metrics["architecture"]
    cand = f[(f["label"] != baseline) & np.isfinite(f["auroc_vs_baseline"])].copy()
    live = (cand["sample_fire_rate"].to_numpy() > 0) | (
        base.loc[cand["feature"], "sample_fire_rate"].to_numpy() > 0
    )
    cand = cand[live]
    cand["strength"] = (cand["auroc_vs_baseline"] - 0.5).abs()
    rows = []
    for label, part in cand.groupby("label", sort=True):
        top = part.sort_values(["strength", "feature"], ascending=[False, True]).head(top_n)
        for r in top.itertuples(index=False):
            b = base.loc[r.feature]
            rows.append(
                {
                    "phase": "sae",
                    "dataset": dataset,
                    "model": model,
                    "layer": layer,
                    "site": site,
                    "position": "token_max",
                    "condition": label,
                    "setting": f"architecture={arch} feature={int(r.feature)}",
                    "metric": "feature_auroc",
                    "comparison": "vs_baseline",
                    "design": "auroc",
                    "value": r.auroc_vs_baseline,
                    "n_treatment": r.n_samples,
                    "n_reference": b["n_samples"],
                    "mean_treatment": r.mean_max_activation,
                    "mean_baseline": b["mean_max_activation"],
                    "family_part": f"{hook}/{arch}",
                    "n_family_part": len(cand),
                }
            )
    return pd.DataFrame(rows)
