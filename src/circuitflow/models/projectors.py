"""Projectors of an assembled VLM: vision tokens ``[batch, n_in, d_vision]`` -> LM-space tokens
``[batch, n_out, d_lm]``, one registered class per architecture.

- ``linear``: one Linear per token (n_out = n_in).
- ``mlp2l``: Linear -> GELU -> Linear per token, as LLaVA-1.5 (n_out = n_in).
- ``c_abstractor``: Honeybee's C-Abstractor: bottleneck ResNet blocks over the 2-D token grid,
  adaptive average pooling to a sqrt(n_out) x sqrt(n_out) grid, ResNet blocks, MLP readout.
- ``perceiver``: Flamingo's Perceiver Resampler: n_out learned queries, ``depth`` layers of
  cross-attention (queries attend to [vision tokens; queries]) + FFN, then a Linear to d_lm.

Every class takes ``(d_vision, d_lm, n_in, grid)`` plus the keys of its ``PARAMS``;
:func:`build_projector` passes each class only its own keys, so one config section (``n_out``,
``hidden``, ``depth``) serves all. Nothing here branches on a projector's name.
"""

from __future__ import annotations

import inspect
import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import nn

from circuitflow.core.errors import ConfigError

_PROJECTORS: dict[str, type[Projector]] = {}


class Projector(nn.Module):
    """Base of the registered projectors; ``params`` holds the keys it was built with."""

    name: ClassVar[str] = ""  # set by register_projector
    PARAMS: ClassVar[tuple[str, ...]] = ()  # constructor keys beyond (d_vision, d_lm, n_in)

    def __init__(self, d_vision: int, d_lm: int, n_in: int, grid: tuple[int, int] | None = None):
        super().__init__()
        self.d_vision, self.d_lm, self.n_in = d_vision, d_lm, n_in
        side = math.isqrt(n_in)
        default = (side, side) if side * side == n_in else (1, n_in)
        self.grid = tuple(grid) if grid is not None else default
        if self.grid[0] * self.grid[1] != n_in:
            raise ConfigError(
                f"projector {self.name!r}: grid {self.grid} does not hold {n_in} vision tokens"
            )
        self.params: dict = {}

    @classmethod
    def out_tokens(cls, n_in: int, **params) -> int:
        """Number of LM-space tokens for ``n_in`` vision tokens."""
        return n_in

    @property
    def n_out(self) -> int:
        return self.out_tokens(self.n_in, **self.params)

    def forward(
        self, x: Float[torch.Tensor, "batch n_in d_vision"]
    ) -> Float[torch.Tensor, "batch n_out d_lm"]:
        raise NotImplementedError


def register_projector(name: str):
    """Class decorator: register a :class:`Projector` subclass under ``name``."""

    def wrap(cls: type[Projector]) -> type[Projector]:
        cls.name = name
        _PROJECTORS[name] = cls
        return cls

    return wrap


def projector_names() -> tuple[str, ...]:
    """Registered projector names, in registration order."""
    return tuple(_PROJECTORS)


def get_projector_class(name: str) -> type[Projector]:
    if name not in _PROJECTORS:
        raise ConfigError(
            f"projectors.architectures: {name!r} is not one of {', '.join(_PROJECTORS)}"
        )
    return _PROJECTORS[name]


def projector_params(name: str, **params) -> dict:
    """The subset of ``params`` that projector ``name`` takes (unknown keys are an error)."""
    known = {key for cls in _PROJECTORS.values() for key in cls.PARAMS}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ConfigError(
            f"projector {name!r}: unknown parameter {unknown[0]!r}; "
            f"known: {', '.join(sorted(known))}"
        )
    cls = get_projector_class(name)
    return {k: v for k, v in params.items() if k in cls.PARAMS}


def build_projector(
    name: str,
    d_vision: int,
    d_lm: int,
    n_in: int,
    grid: tuple[int, int] | None = None,
    **params,
) -> Projector:
    """A new (randomly initialised: seed torch first) projector ``name``; ``grid`` (h, w) of
    the vision tokens, default a square of ``n_in`` (else one row; c_abstractor needs a real
    grid); ``params`` may hold keys of other projectors (``n_out``, ``hidden``, ``depth``),
    which this one ignores."""
    cls = get_projector_class(name)
    signature = inspect.signature(cls.__init__).parameters
    own = {k: signature[k].default for k in cls.PARAMS} | projector_params(name, **params)
    proj = cls(d_vision, d_lm, n_in, grid, **own)
    proj.params = own  # every constructor key, defaults included: a saved config rebuilds it
    return proj


def output_tokens(name: str, n_in: int, **params) -> int:
    """How many LM-space tokens projector ``name`` makes of ``n_in`` vision tokens."""
    return get_projector_class(name).out_tokens(n_in, **projector_params(name, **params))


def n_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Parameter count of ``module`` (only those with requires_grad when ``trainable_only``)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def square_grid(n: int, name: str = "c_abstractor") -> tuple[int, int]:
    """(s, s) with s * s == n; an error naming the projector otherwise."""
    side = math.isqrt(n)
    if side * side != n:
        raise ConfigError(
            f"projector {name!r}: {n} tokens are not a square grid; choose n_out (or an encoder "
            "hook / image size) giving a square number of tokens"
        )
    return side, side


def _positive(name: str, **values) -> None:
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"projectors.{key}: {value!r} is invalid for {name!r}; expected >= 1")


# ---------------------------------------------------------------- token-wise
@register_projector("linear")
class LinearProjector(Projector):
    """One Linear d_vision -> d_lm applied to every token."""

    def __init__(self, d_vision, d_lm, n_in, grid=None):
        super().__init__(d_vision, d_lm, n_in, grid)
        self.proj = nn.Linear(d_vision, d_lm)

    def forward(self, x):
        return self.proj(x)


@register_projector("mlp2l")
class MLP2LProjector(Projector):
    """Linear d_vision -> hidden, GELU, Linear hidden -> d_lm on every token (LLaVA-1.5)."""

    PARAMS = ("hidden",)

    def __init__(self, d_vision, d_lm, n_in, grid=None, hidden: int = 512):
        super().__init__(d_vision, d_lm, n_in, grid)
        _positive(self.name, hidden=hidden)
        self.net = nn.Sequential(nn.Linear(d_vision, hidden), nn.GELU(), nn.Linear(hidden, d_lm))

    def forward(self, x):
        return self.net(x)


# ---------------------------------------------------------------- C-Abstractor
class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of [B, C, H, W]."""

    def forward(self, x: Float[torch.Tensor, "b c h w"]) -> Float[torch.Tensor, "b c h w"]:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class Bottleneck(nn.Module):
    """ResNet bottleneck block: 1x1 -> 3x3 -> 1x1 convs with LayerNorm2d + SiLU, residual
    (a 1x1 conv shortcut when the width changes)."""

    def __init__(self, c_in: int, c_out: int, mid: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, mid, 1, bias=False),
            LayerNorm2d(mid),
            nn.SiLU(),
            nn.Conv2d(mid, mid, 3, padding=1, bias=False),
            LayerNorm2d(mid),
            nn.SiLU(),
            nn.Conv2d(mid, c_out, 1, bias=False),
            LayerNorm2d(c_out),
        )
        self.shortcut = (
            nn.Identity()
            if c_in == c_out
            else nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), LayerNorm2d(c_out))
        )

    def forward(self, x):
        return F.silu(self.body(x) + self.shortcut(x))


@register_projector("c_abstractor")
class CAbstractor(Projector):
    """Honeybee C-Abstractor: learned positions, ``depth`` bottleneck blocks (width
    ``hidden``), adaptive average pooling to a sqrt(n_out)-square grid, ``depth`` more blocks,
    then Linear -> SiLU -> Linear to d_lm on every pooled token."""

    PARAMS = ("n_out", "hidden", "depth")

    def __init__(self, d_vision, d_lm, n_in, grid=None, n_out=16, hidden=512, depth=2):
        super().__init__(d_vision, d_lm, n_in, grid if grid is not None else square_grid(n_in))
        _positive(self.name, n_out=n_out, hidden=hidden, depth=depth)
        self.out_grid = square_grid(n_out, self.name)
        self.pos = nn.Parameter(torch.randn(1, n_in, d_vision) * 0.02)
        widths = [d_vision] + [hidden] * depth
        pairs = zip(widths[:-1], widths[1:], strict=True)
        self.s1 = nn.Sequential(*(Bottleneck(a, b, hidden) for a, b in pairs))
        self.pool = nn.AdaptiveAvgPool2d(self.out_grid)
        self.s2 = nn.Sequential(*(Bottleneck(hidden, hidden, hidden) for _ in range(depth)))
        self.readout = nn.Sequential(nn.Linear(hidden, d_lm), nn.SiLU(), nn.Linear(d_lm, d_lm))

    @classmethod
    def out_tokens(cls, n_in, n_out=16, **params):
        return n_out

    def forward(self, x):
        B, N, D = x.shape
        h, w = self.grid
        g = (x + self.pos).transpose(1, 2).reshape(B, D, h, w)
        g = self.s2(self.pool(self.s1(g)))  # [B, hidden, s, s]
        return self.readout(g.flatten(2).transpose(1, 2))


# ---------------------------------------------------------------- Perceiver Resampler
class PerceiverAttention(nn.Module):
    """Queries (latents) attend to [media; latents], as in Flamingo."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm_media, self.norm_latents = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_kv = nn.Linear(dim, 2 * dim, bias=False)
        self.to_out = nn.Linear(dim, dim, bias=False)

    def forward(
        self, media: Float[torch.Tensor, "b n d"], latents: Float[torch.Tensor, "b q d"]
    ) -> Float[torch.Tensor, "b q d"]:
        media, latents = self.norm_media(media), self.norm_latents(latents)
        B, Q, D = latents.shape
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat([media, latents], dim=1)).chunk(2, dim=-1)

        def split(t):
            return t.view(B, -1, self.heads, D // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(q), split(k), split(v))
        return self.to_out(out.transpose(1, 2).reshape(B, Q, D))


@register_projector("perceiver")
class PerceiverResampler(Projector):
    """Flamingo Perceiver Resampler: tokens -> Linear to ``hidden`` + learned positions; n_out
    learned latents; ``depth`` x (cross-attention, FFN x4) residual layers; LayerNorm; Linear
    to d_lm. The positions keep the grid layout (the attention itself is order-blind)."""

    PARAMS = ("n_out", "hidden", "depth", "heads")

    def __init__(self, d_vision, d_lm, n_in, grid=None, n_out=16, hidden=512, depth=2, heads=8):
        super().__init__(d_vision, d_lm, n_in, grid)
        _positive(self.name, n_out=n_out, hidden=hidden, depth=depth, heads=heads)
        if hidden % heads:
            raise ConfigError(
                f"projectors.hidden: {hidden} is not divisible by the {heads} perceiver heads"
            )
        self.proj_in = nn.Linear(d_vision, hidden)
        self.pos = nn.Parameter(torch.randn(1, n_in, hidden) * 0.02)
        self.latents = nn.Parameter(torch.randn(n_out, hidden) * 0.02)
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    PerceiverAttention(hidden, heads),
                    nn.Sequential(
                        nn.LayerNorm(hidden),
                        nn.Linear(hidden, 4 * hidden, bias=False),
                        nn.GELU(),
                        nn.Linear(4 * hidden, hidden, bias=False),
                    ),
                ]
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(hidden)
        self.proj_out = nn.Linear(hidden, d_lm)

    @classmethod
    def out_tokens(cls, n_in, n_out=16, **params):
        return n_out

    def forward(self, x):
        media = self.proj_in(x) + self.pos
        lat = self.latents.unsqueeze(0).expand(x.shape[0], -1, -1)
        for attn, ffn in self.layers:
            lat = lat + attn(media, lat)
            lat = lat + ffn(lat)
        return self.proj_out(self.norm(lat))
