"""``standard`` SAE (SAELens's name): ReLU features with an L1 sparsity penalty.

``f = ReLU((x - b_dec) @ W_enc + b_enc)``, loss ``|x - x_hat|^2 + l1_coefficient * |f|_1``
(mean over the batch). The encoder starts at a tenth of the decoder's transpose.
"""

from __future__ import annotations

import torch
from jaxtyping import Float

from circuitflow.sae.base import GradStep, Params, SAEArchitecture, register_sae_class
from circuitflow.sae.config import SAETrainConfig


def _grads_standard(x, W_encT, b_enc, W_dec, b_dec, l1: float):
    """Loss and gradients of mean_b(||x_hat - x||^2 + l1 * sum(f)) for ReLU features.

    x [B, d_in], W_encT [d_sae, d_in] (W_enc transposed), W_dec [d_sae, d_in]; returns
    (loss, mse, (g_W_encT, g_b_enc, g_W_dec, g_b_dec)).
    """
    B = x.shape[0]
    xc = x - b_dec
    pre = torch.addmm(b_enc, xc, W_encT.T)
    f = pre.clamp_min(0)
    x_hat = torch.addmm(b_dec, f, W_dec)
    err = x_hat - x
    mse = err.pow(2).sum() / B
    l1_term = f.sum() / B
    g_xhat = err.mul_(2.0 / B)
    g_W_dec = f.T @ g_xhat
    g_pre = torch.addmm(torch.full_like(pre, l1 / B), g_xhat, W_dec.T).mul_(pre > 0)
    g_W_encT = g_pre.T @ xc
    g_b_enc = g_pre.sum(0)
    # x enters the encoder as x - b_dec: d/db_dec = -sum_b g_pre @ W_enc = -g_b_enc @ W_encT
    g_b_dec = g_xhat.sum(0) - g_b_enc @ W_encT
    return (mse + l1 * l1_term).item(), mse.item(), (g_W_encT, g_b_enc, g_W_dec, g_b_dec)


class StandardSAE(SAEArchitecture):
    """ReLU + L1."""

    encoder_init_scale = 0.1

    @staticmethod
    def activate(
        pre: Float[torch.Tensor, "n d_sae"], cfg: SAETrainConfig
    ) -> Float[torch.Tensor, "n d_sae"]:
        return pre.clamp_min_(0)

    @staticmethod
    def grads(
        x: Float[torch.Tensor, "batch d_in"], params: Params, cfg: SAETrainConfig
    ) -> GradStep:
        return _grads_standard(x, *params, cfg.l1_coefficient)

    @classmethod
    def training_details(cls, cfg: SAETrainConfig) -> dict:
        return {"l1_coefficient": cfg.l1_coefficient}


register_sae_class("standard", StandardSAE)
