"""Evaluating an SAE: reconstruction metrics, CE-loss recovered and the feature table.

Reconstruction metrics follow SAELens's definitions (explained variance, MSE, L0, dead
features) on tokens x [n_tokens, d_in]. CE-loss recovered splices the SAE's reconstruction
into a TransformerLens bridge at one hook and compares next-token losses with the clean and
the zero-ablated forward (and Delta CE = CE_sae - CE_clean). The feature table ranks each
feature's per-sample max activation by label (AUROC against the baseline label) and lists its
top prompts. For the statistics phase the top features of each label are chosen on the TRAIN
samples (:func:`select_features`) and their TEST samples' values are written as
``measurements.csv`` rows (design ``rank``: Mann-Whitney U and AUROC in the stats engine),
beside the per-prompt CE losses (paired by prompt).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from scipy.stats import rankdata

from circuitflow import store
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
    """Next-token LM loss with the hook clean, replaced by the SAE, and zero-ablated
    (token-weighted means over every prediction), and each prompt's mean loss per mode."""

    ce_loss_clean: float
    ce_loss_sae: float
    ce_loss_zero: float
    ce_loss_recovered: float  # (zero - sae) / (zero - clean)
    delta_ce: float  # sae - clean: the loss the SAE's reconstruction costs
    n_prompts: int
    n_predictions: int
    # {"clean" | "sae" | "zero": [n_prompts] mean loss of each prompt, in the given order}
    per_prompt: Mapping[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    def as_dict(self) -> dict:
        """The scalar fields (metrics.json)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "per_prompt"}


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
    per_prompt = {name: np.zeros(len(token_ids)) for name in sums}
    n_pred = 0
    with torch.no_grad(), bridge.hooks(fwd_hooks=[(hook, splice)]):
        for b0 in range(0, len(order), batch_size):
            rows = order[b0 : b0 + batch_size]
            sel = [np.asarray(token_ids[i]) for i in rows]
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
                prompt_sums = (ce * mask).double().sum(1)
                sums[name] += float(prompt_sums.sum())
                per_prompt[name][rows] = (prompt_sums / (lengths - 1)).numpy()
                del logits
    mode["value"] = "clean"
    losses = {name: value / n_pred for name, value in sums.items()}
    gap = losses["zero"] - losses["clean"]
    return CELossResult(
        ce_loss_clean=losses["clean"],
        ce_loss_sae=losses["sae"],
        ce_loss_zero=losses["zero"],
        ce_loss_recovered=(losses["zero"] - losses["sae"]) / gap if gap != 0 else float("nan"),
        delta_ce=losses["sae"] - losses["clean"],
        n_prompts=len(token_ids),
        n_predictions=n_pred,
        per_prompt=per_prompt,
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
            au = auroc(smax[keep], sel[keep])  # this table's samples: descriptive only
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


def sample_max_activations(
    sae: SAE,
    x: Float[np.ndarray, "n_tokens d_in"],
    sample_index: Int[np.ndarray, " n_tokens"],
    n_samples: int,
    chunk: int = 4096,
) -> Float[np.ndarray, "n_samples d_sae"]:
    """Each sample's max activation of every feature over its tokens, encoding ``chunk``
    tokens at a time (0 for a sample without tokens)."""
    sample_index = np.asarray(sample_index, dtype=np.int64)
    out = torch.zeros(n_samples, sae.cfg.d_sae)
    for i in range(0, len(x), chunk):
        f = sae.encode(np.asarray(x[i : i + chunk], dtype=np.float32)).float().cpu()
        out = torch.maximum(out, per_sample_max(f, sample_index[i : i + chunk], n_samples))
    return out.numpy()


def hook_layer_site(hook: str) -> tuple:
    """(layer, site) of a hook name (store.parse_hook_name); (NA, hook) for other names."""
    try:
        return store.parse_hook_name(hook)
    except ValueError:
        return pd.NA, hook


def label_aurocs(
    smax: Float[np.ndarray, "n_samples d_sae"],
    sample_labels: Sequence[str],
    conditions: Sequence[str],
    baseline: str,
) -> dict[str, Float[np.ndarray, " d_sae"]]:
    """AUROC of every feature's per-sample max, each condition's samples vs ``baseline``'s."""
    labels = np.asarray(sample_labels)
    base = labels == baseline
    out = {}
    for condition in conditions:
        if condition != baseline:
            keep = (labels == condition) | base
            out[condition] = auroc(smax[keep], labels[keep] == condition)
    return out


def select_features(
    smax: Float[np.ndarray, "n_samples d_sae"],
    sample_labels: Sequence[str],
    conditions: Sequence[str],
    baseline: str,
    top_n: int,
    scores: Float[np.ndarray, "n_samples d_sae"] | None = None,
) -> tuple[pd.DataFrame, int]:
    """The ``top_n`` features of each condition by |AUROC - 0.5| of the per-sample max (or of
    ``scores``, e.g. photo-centred values) (condition vs ``baseline`` samples; ties: the lower
    feature), among the live ones (firing on a sample of either group). Pass the samples the
    choice may see (the train split), and test the chosen features on others. Returns
    (condition, feature, rank, auroc_select), and the number of live (feature, condition)
    pairs: the hypotheses the choice was made from."""
    labels = np.asarray(sample_labels)
    base = labels == baseline
    ranked = smax if scores is None else scores
    rows, n_live = [], 0
    for condition, au in label_aurocs(ranked, labels, conditions, baseline).items():
        live = (smax[(labels == condition) | base] > 0).any(0) & np.isfinite(au)
        n_live += int(live.sum())
        strength = np.where(live, np.abs(au - 0.5), -np.inf)
        order = np.lexsort((np.arange(len(au)), -strength))  # strength desc, then feature
        for rank, j in enumerate(order[: min(top_n, int(live.sum()))]):
            rows.append(
                {"condition": condition, "feature": int(j), "rank": rank, "auroc_select": au[j]}
            )
    columns = ["condition", "feature", "rank", "auroc_select"]
    return pd.DataFrame(rows, columns=columns), n_live


def annotate_selection(
    table: pd.DataFrame, aurocs: Mapping[str, np.ndarray], selected: pd.DataFrame
) -> pd.DataFrame:
    """The feature table with ``auroc_train`` (the AUROC the choice saw, ``aurocs`` from
    :func:`label_aurocs` on the train samples; empty for the baseline) and ``selected``."""
    table = table.copy()
    table["auroc_train"] = [
        aurocs[label][j] if label in aurocs else np.nan
        for j, label in zip(table["feature"], table["label"], strict=True)
    ]
    picked = set(zip(selected["condition"], selected["feature"], strict=True))
    table["selected"] = [
        (label, j) in picked for j, label in zip(table["feature"], table["label"], strict=True)
    ]
    return table


def feature_arms(
    selected: pd.DataFrame,
    labels: np.ndarray,
    units: np.ndarray,
    smax: Float[np.ndarray, "sample d_sae"],
    baseline: str,
    arch: str,
    keep: np.ndarray | None = None,
    suffix: str = "",
) -> pd.DataFrame:
    """Per chosen (condition, feature): the max activations of the condition's samples (arm
    treatment) and the ``baseline`` samples (arm baseline), among the ``keep`` rows (default
    all), with their ``units``; ``suffix`` ends the setting (e.g. a null's labels)."""
    keep = np.ones(len(labels), bool) if keep is None else keep
    base = keep & (labels == baseline)
    parts = []
    for r in selected.itertuples(index=False):
        sel = keep & (labels == r.condition)
        parts.append(
            pd.DataFrame(
                {
                    "arm": np.r_[["treatment"] * int(sel.sum()), ["baseline"] * int(base.sum())],
                    "unit": np.r_[units[sel], units[base]],
                    "value": np.r_[smax[sel, r.feature], smax[base, r.feature]].astype(float),
                    "condition": r.condition,
                    "setting": f"architecture={arch} feature={int(r.feature)}{suffix}",
                }
            )
        )
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def feature_measurements(
    selected: pd.DataFrame,
    smax: Float[np.ndarray, "n_samples d_sae"],
    sample_ids: Sequence[str],
    sample_labels: Sequence[str],
    baseline: str,
    metrics: Mapping,
    n_family_part: int,
) -> pd.DataFrame:
    """``measurements.csv`` rows of the chosen features on other samples (the test split):
    per (condition, feature), the per-sample max activation of the condition's samples (arm
    treatment) and of the ``baseline`` samples (arm baseline); design ``rank`` (Mann-Whitney U
    and AUROC in the stats engine), unit = sample. Every live feature of the choice is a
    hypothesis of the family: ``n_family_part`` (from :func:`select_features`) counts them for
    this SAE (``family_part`` = hook/architecture)."""
    labels, ids = np.asarray(sample_labels), np.asarray(sample_ids).astype(str)
    hook, arch = metrics["hook"], metrics["architecture"]
    layer, site = hook_layer_site(hook)
    frame = feature_arms(selected, labels, ids, smax, baseline, arch)
    return sae_measurements(
        frame,
        metrics,
        layer=layer,
        site=site,
        position="token_max",
        metric="feature_max_activation",
        unit_kind="sample",
        design=store.RANK_DESIGN,
        family_part=f"{hook}/{arch}",
        n_family_part=n_family_part,
    )


def ce_measurements(ce: CELossResult, prompt_ids: Sequence[str], metrics: Mapping) -> pd.DataFrame:
    """``measurements.csv`` rows of the per-prompt CE loss with the SAE spliced in (arm
    treatment) and clean (arm baseline), paired by prompt: their mean difference is the
    prompt-averaged Delta CE (metrics.json's ``delta_ce`` is token-weighted)."""
    ids = np.asarray(prompt_ids).astype(str)
    if len(ids) != ce.n_prompts or not ce.per_prompt:
        raise SAEError(f"{len(ids)} prompt ids for {ce.n_prompts} CE losses (or none per prompt)")
    layer, site = hook_layer_site(metrics["hook"])
    frame = pd.DataFrame(
        {
            "arm": np.r_[["treatment"] * len(ids), ["baseline"] * len(ids)],
            "unit": np.r_[ids, ids],
            "value": np.r_[ce.per_prompt["sae"], ce.per_prompt["clean"]].astype(float),
        }
    )
    return sae_measurements(
        frame,
        metrics,
        layer=layer,
        site=site,
        position="all",
        condition="all",
        setting=f"architecture={metrics['architecture']}",
        metric="ce_loss",
        unit_kind="prompt",
    )


def sae_measurements(frame: pd.DataFrame, metrics: Mapping, **const) -> pd.DataFrame:
    """``frame`` (arm, unit, value and any columns) as measurement rows of one SAE: phase sae,
    its dataset and model, the columns ``const``, every other column empty."""
    frame = frame.assign(phase="sae", dataset=metrics["dataset"], model=metrics["model"], **const)
    columns = [*store.MEASUREMENT_COLUMNS, *store.MEASUREMENT_OPTIONAL]
    for col in columns:
        if col not in frame:
            frame[col] = np.nan if col in ("layer", "value", "n_family_part") else ""
    return frame[columns]
