"""One SAE's training settings, checked on construction.

The workflow defaults live in the config schema (``schemas/config.schema.yaml``, section
``sae``), not here: :meth:`SAETrainConfig.from_config` takes the validated section (schema
defaults filled in), so every field that has a config key must be given.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields

from circuitflow.core.errors import ConfigError
from circuitflow.sae.base import SAEArchitecture, config_error, get_sae_class

NORMALIZATIONS = ("none", "expected_average_only_in", "expected_average_centered")
B_DEC_INITS = ("geometric_median", "mean", "zeros")
# config keys that are not training settings (sae.images: rules/common.smk image_sae_settings)
WORKFLOW_KEYS = ("architectures", "ce_loss_prompts", "images")


@dataclass(frozen=True, kw_only=True)
class SAETrainConfig:
    """One SAE's training settings (SAELens names where SAELens has one).

    ``d_sae = expansion_factor * d_in``. ``training_tokens``, when given, overrides
    ``n_epochs``; ``batch_size`` is in tokens. ``lr`` decays linearly to 0 over the last
    ``lr_decay_fraction`` of the steps. ``train_threads``: torch threads while training; a fixed
    number makes the weights byte-identical on any machine (reductions split across threads
    sum in another order); None uses the current setting. ``k`` is used by ``topk`` only,
    ``l1_coefficient`` by ``standard`` only.
    """

    d_in: int
    architecture: str
    expansion_factor: int
    k: int
    l1_coefficient: float
    lr: float
    batch_size: int
    n_epochs: int
    training_tokens: int | None
    seed: int
    normalize_activations: str
    b_dec_init: str
    lr_decay_fraction: float = 0.2  # not a config key
    adam_betas: tuple[float, float] = (0.9, 0.999)  # not a config key
    train_threads: int | None
    d_sae: int = field(init=False)

    def __post_init__(self):
        def bad(key, value, expected):
            raise config_error(key, value, expected)

        arch = get_sae_class(self.architecture)
        if self.normalize_activations not in NORMALIZATIONS:
            bad(
                "normalize_activations",
                self.normalize_activations,
                f"one of {', '.join(NORMALIZATIONS)}",
            )
        if self.b_dec_init not in B_DEC_INITS:
            bad("b_dec_init", self.b_dec_init, f"one of {', '.join(B_DEC_INITS)}")
        for key in ("d_in", "expansion_factor", "batch_size", "n_epochs"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                bad(key, value, "an integer >= 1")
        if self.training_tokens is not None and (
            isinstance(self.training_tokens, bool)
            or not isinstance(self.training_tokens, int)
            or self.training_tokens < 1
        ):
            bad("training_tokens", self.training_tokens, "an integer >= 1 or null")
        object.__setattr__(self, "d_sae", self.expansion_factor * self.d_in)
        arch.check(self)
        for key in ("l1_coefficient", "lr"):
            value = getattr(self, key)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                bad(key, value, "a finite number >= 0")
        if self.lr == 0:
            bad("lr", self.lr, "a number > 0")
        if not 0 <= self.lr_decay_fraction <= 1:
            bad("lr_decay_fraction", self.lr_decay_fraction, "a number in [0, 1]")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            bad("seed", self.seed, "an integer")
        if self.train_threads is not None and (
            isinstance(self.train_threads, bool)
            or not isinstance(self.train_threads, int)
            or self.train_threads < 1
        ):
            bad("train_threads", self.train_threads, "an integer >= 1 or null")

    @classmethod
    def from_config(
        cls, section: Mapping, d_in: int, architecture: str, seed: int
    ) -> SAETrainConfig:
        """From the validated config's ``sae`` section (workflow-only keys are dropped).

        The section must carry every setting (validate with the schema's defaults filled in);
        an unknown key is a TypeError, as for the constructor.
        """
        settings = {key: value for key, value in section.items() if key not in WORKFLOW_KEYS}
        given = {"d_in", "architecture", "seed", *settings}
        missing = [f.name for f in required_fields() if f.name not in given]
        if missing:
            raise ConfigError(
                f"sae.{missing[0]}: missing from the config's sae section (missing: "
                f"{', '.join(missing)}); validate the config with the schema's defaults "
                "(schemas/config.schema.yaml, set_default=True)"
            )
        return cls(d_in=d_in, architecture=architecture, seed=seed, **settings)

    @property
    def arch(self) -> type[SAEArchitecture]:
        """The registered class of ``architecture``."""
        return get_sae_class(self.architecture)

    def n_steps(self, n_train: int) -> int:
        tokens = self.training_tokens or self.n_epochs * n_train
        return max(1, math.ceil(tokens / self.batch_size))

    def training_details(self) -> dict:
        details = asdict(self)
        details["adam_betas"] = list(self.adam_betas)
        return details


def required_fields() -> list:
    """The SAETrainConfig fields without a dataclass default (every caller gives them)."""
    return [
        f
        for f in fields(SAETrainConfig)
        if f.init and f.default is MISSING and f.default_factory is MISSING
    ]
