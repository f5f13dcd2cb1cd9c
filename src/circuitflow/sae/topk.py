"""``topk`` SAE (SAELens's name): the ``k`` largest pre-activations of each token, no penalty.

``f = ReLU(TopK_k((x - b_dec) @ W_enc + b_enc))``, loss ``|x - x_hat|^2`` (mean over the
batch). The training step touches only the ``k`` selected features per token: decoding is an
embedding bag and the weight gradients are sparse [d_sae, B] x dense [B, d_in] products.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from jaxtyping import Float

from circuitflow.sae.base import (
    GradStep,
    Params,
    SAEArchitecture,
    config_error,
    register_sae_class,
)
from circuitflow.sae.config import SAETrainConfig


def _grads_topk(x, W_encT, b_enc, W_dec, b_dec, k: int):
    """Loss and gradients of mean_b ||x_hat - x||^2 for top-k features.

    x [B, d_in], W_encT [d_sae, d_in] (W_enc transposed), W_dec [d_sae, d_in]; returns
    (loss, mse, (g_W_encT, g_b_enc, g_W_dec, g_b_dec)), loss == mse.
    """
    B, d = x.shape
    xc = x - b_dec
    pre = torch.addmm(b_enc, xc, W_encT.T)
    vals, idx = pre.topk(k, dim=1)
    act = vals.clamp_min(0)
    x_hat = F.embedding_bag(idx, W_dec, per_sample_weights=act, mode="sum").add_(b_dec)
    err = x_hat - x
    mse = err.pow(2).sum() / B
    g_xhat = err.mul_(2.0 / B)
    g_vals = (g_xhat @ W_dec.T).gather(1, idx).mul_(vals > 0)
    flat = idx.reshape(-1)
    index = torch.stack([flat, torch.arange(B).repeat_interleave(k)])
    shape = (W_dec.shape[0], B)
    g_W_dec = torch.sparse.mm(
        torch.sparse_coo_tensor(index, act.reshape(-1), shape, check_invariants=False), g_xhat
    )
    g_W_encT = torch.sparse.mm(
        torch.sparse_coo_tensor(index, g_vals.reshape(-1), shape, check_invariants=False), xc
    )
    g_b_enc = torch.zeros_like(b_enc).index_add_(0, flat, g_vals.reshape(-1))
    g_b_dec = g_xhat.sum(0) - g_b_enc @ W_encT
    value = mse.item()
    return value, value, (g_W_encT, g_b_enc, g_W_dec, g_b_dec)


class TopKSAE(SAEArchitecture):
    """Top-k, then ReLU."""

    encoder_init_scale = 1.0

    @staticmethod
    def activate(
        pre: Float[torch.Tensor, "n d_sae"], cfg: SAETrainConfig
    ) -> Float[torch.Tensor, "n d_sae"]:
        vals, idx = pre.topk(cfg.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter_(-1, idx, vals.clamp_min(0))

    @staticmethod
    def grads(
        x: Float[torch.Tensor, "batch d_in"], params: Params, cfg: SAETrainConfig
    ) -> GradStep:
        return _grads_topk(x, *params, cfg.k)

    @classmethod
    def check(cls, cfg: SAETrainConfig) -> None:
        k, d_sae = cfg.k, cfg.d_sae
        if not (isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= d_sae):
            raise config_error("k", k, f"an integer in 1..d_sae={d_sae} (expansion_factor * d_in)")

    @classmethod
    def cfg_fields(cls, cfg: SAETrainConfig) -> dict:
        # decoder rows are unit norm, so SAELens need not rescale
        return {"k": cfg.k, "rescale_acts_by_decoder_norm": False}

    @classmethod
    def training_details(cls, cfg: SAETrainConfig) -> dict:
        return {"k": cfg.k}

    @classmethod
    def settings_from_cfg(cls, sae_lens_cfg: Mapping) -> dict:
        return {"k": sae_lens_cfg["k"]}


register_sae_class("topk", TopKSAE)
