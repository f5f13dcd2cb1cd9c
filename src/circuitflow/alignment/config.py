"""Settings of the alignment phase: the methods, sites, positions and similarity measures it
knows, the table's config dataclass, and the seed streams that keep each kind of random draw
apart.

The maps, the nulls, the table and the bootstrap all read :class:`AlignmentConfig`, so it
lives apart from each of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

from circuitflow.workflow import schema_backed

METHODS = ("procrustes", "ridge", "cca")
NO_MAP = "none"  # only where d_a == d_b: the identity, i.e. the models share a basis
SITES = ("hook_resid_pre", "hook_resid_post")
POSITIONS = ("mean", "last", "trigger_mean")
# Cross-model similarity of the held-out activations at matched depths (no map, no subspace).
SIMILARITY_MEASURES = ("cka_debiased", "mutual_knn")
OVERLAP = "subspace_overlap"  # the ``measure`` of the subspace-overlap rows
MEASURES = (OVERLAP, *SIMILARITY_MEASURES)

# Seed streams: one per kind of random draw, so adding draws of one kind leaves others fixed.
SHUFFLE_STREAM, RANDOM_STREAM, BOOTSTRAP_STREAM, LABEL_STREAM, PAIRING_STREAM = 1, 2, 3, 4, 5


@dataclass(frozen=True)
@schema_backed("alignment")
class AlignmentConfig:
    """Settings of one alignment table (config key ``alignment`` plus the global ``seed``)."""

    methods: tuple[str, ...]
    r_max: int
    ridge_alpha: float
    cca_components: int
    n_random: int
    n_shuffles: int
    n_label_permutations: int
    similarity: tuple[str, ...]
    knn_k: int
    k_max: int = 10
    sites: tuple[str, ...]
    positions: tuple[str, ...]
    grid_sites: tuple[str, ...]
    grid_positions: tuple[str, ...]
    seed: int = 0

    def __post_init__(self) -> None:
        for key in ("methods", "similarity", "sites", "positions", "grid_sites", "grid_positions"):
            object.__setattr__(self, key, tuple(getattr(self, key)))
        for key, allowed in (
            ("methods", METHODS),
            ("similarity", SIMILARITY_MEASURES),
            ("sites", SITES),
            ("positions", POSITIONS),
            ("grid_sites", SITES),
            ("grid_positions", POSITIONS),
        ):
            bad = [v for v in getattr(self, key) if v not in allowed]
            if bad:
                raise ValueError(f"alignment.{key}: {bad} not among {list(allowed)}")
        for key in ("r_max", "cca_components", "k_max", "knn_k"):
            if getattr(self, key) < 1:
                raise ValueError(f"alignment.{key}: {getattr(self, key)} must be >= 1")
        for key in ("n_random", "n_shuffles", "n_label_permutations"):
            if getattr(self, key) < 0:
                raise ValueError(f"alignment.{key}: {getattr(self, key)} must be >= 0")
        if not self.ridge_alpha > 0:
            raise ValueError(f"alignment.ridge_alpha: {self.ridge_alpha} must be > 0")
        if self.seed < 0:
            raise ValueError(f"seed: {self.seed} must be >= 0")

    @classmethod
    def from_config(cls, alignment: Mapping, seed: int, k_max: int) -> AlignmentConfig:
        """From the validated config section (unknown keys such as ``pairs`` are ignored);
        ``k_max`` is the fallback when the section has none (the vectors phase's k_max)."""
        names = set(cls.__dataclass_fields__) - {"seed", "k_max"}
        kwargs = {key: alignment[key] for key in names if key in alignment}
        return cls(**kwargs, seed=seed, k_max=alignment.get("k_max", k_max))

    def without_nulls(self) -> AlignmentConfig:
        """The same maps with no shuffled or permuted-label null (bootstrap replicates)."""
        return AlignmentConfig(**{**config_dict(self), "n_shuffles": 0, "n_label_permutations": 0})


def config_dict(config: AlignmentConfig) -> dict:
    """The config as plain JSON-ready values (for manifests)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}
