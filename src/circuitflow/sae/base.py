"""The SAE container and the registry of SAE architectures.

Every architecture shares the encoder pre-activations ``(x - b_dec) @ W_enc + b_enc`` and the
decoder ``x_hat = f @ W_dec + b_dec`` (unit-norm decoder rows, one per feature); what differs
(the activation, the hand-written training step, the encoder's initial scale, the extra
``cfg.json`` keys) lives in one :class:`SAEArchitecture` subclass per file, registered under
its SAELens name with :func:`register_sae_class`, as SAELens registers its SAE classes.
Nothing here branches on an architecture's name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import torch
from jaxtyping import Float

from circuitflow.core.errors import CircuitflowError, ConfigError

Params = tuple[
    torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor
]  # W_encT, b_enc, W_dec, b_dec
# (total loss, reconstruction MSE, gradients of the loss in the order of Params)
GradStep = tuple[float, float, Params]


class SAEError(CircuitflowError, ValueError):
    """SAE inputs or files the code cannot use; the message names the file or data and why."""


def config_error(key: str, value: Any, expected: str) -> ConfigError:
    """The one-line error for a bad ``sae.<key>`` value."""
    return ConfigError(f"sae.{key}: {value!r} is invalid; expected {expected}")


class SAESettings(Protocol):
    """What an SAE needs of its config (:class:`circuitflow.sae.SAETrainConfig` has it)."""

    architecture: str
    d_in: int
    d_sae: int


class SAEArchitecture:
    """One SAE architecture: subclass it in its own file and call :func:`register_sae_class`.

    A subclass implements :meth:`activate` and :meth:`grads`; the other hooks default to "no
    extra settings". Classes are used as namespaces (never instantiated); ``cfg`` is the
    :class:`~circuitflow.sae.SAETrainConfig` the SAE was built with.
    """

    name: ClassVar[str] = ""  # set by register_sae_class
    encoder_init_scale: ClassVar[float] = 1.0  # W_enc starts as this * W_dec.T

    @staticmethod
    def activate(
        pre: Float[torch.Tensor, "n d_sae"], cfg: SAESettings
    ) -> Float[torch.Tensor, "n d_sae"]:
        """Features from encoder pre-activations (may work in place on ``pre``)."""
        raise NotImplementedError

    @staticmethod
    def grads(x: Float[torch.Tensor, "batch d_in"], params: Params, cfg: SAESettings) -> GradStep:
        """Loss, MSE and hand-written gradients of one batch (params as in :data:`Params`)."""
        raise NotImplementedError

    @classmethod
    def check(cls, cfg: SAESettings) -> None:
        """Raise :func:`config_error` for a setting this architecture cannot use."""

    @classmethod
    def cfg_fields(cls, cfg: SAESettings) -> dict:
        """Extra keys of SAELens's inference ``cfg.json`` (e.g. ``k``)."""
        return {}

    @classmethod
    def training_details(cls, cfg: SAESettings) -> dict:
        """``metadata.training_architecture_details``: the settings only this one uses."""
        return {}

    @classmethod
    def settings_from_cfg(cls, sae_lens_cfg: Mapping) -> dict:
        """:class:`SAETrainConfig` fields read back from a SAELens ``cfg.json``."""
        return {}


_REGISTRY: dict[str, type[SAEArchitecture]] = {}


def register_sae_class(name: str, cls: type[SAEArchitecture]) -> None:
    """Make ``cls`` the architecture called ``name`` (its SAELens ``architecture`` string)."""
    if not (isinstance(cls, type) and issubclass(cls, SAEArchitecture)):
        raise TypeError(f"SAE architecture {name!r}: {cls!r} is not an SAEArchitecture subclass")
    for method in ("activate", "grads"):
        if getattr(cls, method) is getattr(SAEArchitecture, method):
            raise TypeError(f"SAE architecture {name!r}: {cls.__name__} must define {method}")
    if _REGISTRY.get(name, cls) is not cls:
        raise ValueError(f"SAE architecture {name!r} is already {_REGISTRY[name].__name__}")
    cls.name = name
    _REGISTRY[name] = cls


def get_sae_class(name: str) -> type[SAEArchitecture]:
    """The architecture registered as ``name``; a one-line config error names the valid ones."""
    if isinstance(name, str) and name in _REGISTRY:
        return _REGISTRY[name]
    raise config_error("architectures", name, f"one of {', '.join(_REGISTRY)}")


def architecture_names() -> tuple[str, ...]:
    """Registered architectures, in registration order."""
    return tuple(_REGISTRY)


# ---------------------------------------------------------------- the SAE
@dataclass
class SAE:
    """Trained weights in the SAELens layout (raw-activation units), plus how they were made.

    W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in], b_dec [d_in].
    """

    W_enc: Float[torch.Tensor, "d_in d_sae"]
    b_enc: Float[torch.Tensor, " d_sae"]
    W_dec: Float[torch.Tensor, "d_sae d_in"]
    b_dec: Float[torch.Tensor, " d_in"]
    cfg: SAESettings
    scaling_factor: float = 1.0  # inputs were multiplied by this during training (folded)
    n_steps: int = 0
    n_training_tokens: int = 0
    loss_history: list[float] = field(default_factory=list)

    @property
    def architecture(self) -> str:
        return self.cfg.architecture

    @property
    def arch(self) -> type[SAEArchitecture]:
        return get_sae_class(self.cfg.architecture)

    def encode(
        self, x: Float[torch.Tensor, "n d_in"], chunk: int = 8192
    ) -> Float[torch.Tensor, "n d_sae"]:
        """Feature activations of raw activations x (float32, ``chunk`` rows at a time)."""
        x = torch.as_tensor(x, dtype=torch.float32)
        if len(x) == 0:
            return torch.zeros(0, self.cfg.d_sae)
        return torch.cat([self.encode_batch(x[i : i + chunk]) for i in range(0, len(x), chunk)])

    def encode_batch(self, x: Float[torch.Tensor, "n d_in"]) -> Float[torch.Tensor, "n d_sae"]:
        """Features of one float32 batch on the weights' device (no chunking)."""
        pre = torch.addmm(self.b_enc, x - self.b_dec, self.W_enc)
        return self.arch.activate(pre, self.cfg)

    def decode(self, f: Float[torch.Tensor, "n d_sae"]) -> Float[torch.Tensor, "n d_in"]:
        return torch.addmm(self.b_dec, f, self.W_dec)

    def reconstruct(
        self, x: Float[torch.Tensor, "n d_in"], chunk: int = 8192
    ) -> Float[torch.Tensor, "n d_in"]:
        """decode(encode(x)) on any device; returned on x's device and dtype."""
        x = torch.as_tensor(x)
        xs = x.to(self.W_enc.device, torch.float32)
        out = [self.decode(self.encode_batch(xs[i : i + chunk])) for i in range(0, len(xs), chunk)]
        return (torch.cat(out) if out else xs.clone()).to(x.device, x.dtype)
