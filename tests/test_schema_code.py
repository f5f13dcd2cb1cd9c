"""The schema holds every default and every list of choices; the code must agree with it.

Each config dataclass is built from the validated config: a field that mirrors a schema key
either has no default or has the schema's. Each enum in the schema equals the one constant
the code checks values against (and the rules' wildcard constraints use).
"""

import dataclasses

import pytest

from circuitflow import extract, models, store
from circuitflow.workflow import config_schema, schema_defaults


def _prop(*path):
    node = config_schema()
    for key in path:
        node = node["properties"][key]
    return node


def _enum(*path):
    node = _prop(*path)
    return node["items"]["enum"] if node.get("type") == "array" else node["enum"]


def _config_classes():
    from circuitflow import alignment, patching, sae, steering, vectors

    return [
        (vectors.SpecificityConfig, ("vectors",), "specificity_"),
        (extract.ExtractConfig, ("extract",)),
        (sae.SAETrainConfig, ("sae",)),
        (alignment.AlignmentConfig, ("alignment",)),
        (alignment.BootstrapConfig, ("alignment",), "bootstrap_"),
        (patching.PatchConfig, ("patching",)),
        (patching.VisionPatchConfig, ("vision",)),
        (steering.SteeringParams, ("steering",)),
        (steering.VisionSteerConfig, ("vision", "steering")),
    ]


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _same(code, schema) -> bool:
    if isinstance(code, tuple | list) and isinstance(schema, list):
        return list(code) == schema
    if isinstance(code, dict) and isinstance(schema, dict):
        return {k: list(v) for k, v in code.items()} == {k: list(v) for k, v in schema.items()}
    return code == schema


def test_a_config_dataclass_takes_the_schema_defaults_and_copies_mappings():
    from circuitflow import patching

    a, b = patching.PatchConfig(), patching.PatchConfig()
    assert a.n_frames == schema_defaults("patching")["n_frames"]
    assert a.position_sets == tuple(schema_defaults("patching")["position_sets"])
    assert a.metric_words == b.metric_words and a.metric_words is not b.metric_words


@pytest.mark.parametrize("index", range(9))
def test_dataclass_defaults_are_the_schema_defaults(index):
    cls, section, *prefix = _config_classes()[index]
    defaults = schema_defaults(*section)
    wrong = []
    for f in dataclasses.fields(cls):
        key = prefix[0] + f.name if prefix and prefix[0] + f.name in defaults else f.name
        if not f.init or key not in defaults:
            continue
        code = _default(f)  # no default (built from config only) or the schema's
        if code is not dataclasses.MISSING and not _same(code, defaults[key]):
            wrong.append(f"{'.'.join(section)}.{key}: code {code!r}, schema {defaults[key]!r}")
    assert wrong == []


def test_choice_lists_are_one_constant_each():
    from circuitflow import alignment, evaluators, patching, projectors, sae, steering, vectors
    from circuitflow.datasets import MANIFEST_LAYOUTS
    from circuitflow.models import readout
    from circuitflow.vectors import GRADED

    pairs = {
        "models.family": (
            _prop("models")["additionalProperties"]["properties"]["family"]["enum"],
            models.FAMILIES,
        ),
        "models.dtype": (
            _prop("models")["additionalProperties"]["properties"]["dtype"]["enum"],
            models.DTYPES,
        ),
        "models.backend": (
            _prop("models")["additionalProperties"]["properties"]["backend"]["enum"],
            models.backend_choices(),
        ),
        "extract.sites": (_enum("extract", "sites"), store.SITES),
        "extract.store_dtype": (_enum("extract", "store_dtype"), extract.STORE_DTYPES),
        "sae.architectures": (_enum("sae", "architectures"), sae.ARCHITECTURES),
        "alignment.methods": (_enum("alignment", "methods"), alignment.METHODS),
        "alignment.similarity": (_enum("alignment", "similarity"), alignment.SIMILARITY_MEASURES),
        "alignment.sites": (_enum("alignment", "sites"), store.SITES),
        "alignment.positions": (_enum("alignment", "positions"), store.POSITIONS),
        "patching.split": (_enum("patching", "split"), patching.SPLITS),
        "patching.position_sets": (_enum("patching", "position_sets"), patching.POSITION_SETS),
        "patching.ablation_mode": (_enum("patching", "ablation_mode"), patching.ABLATION_MODES),
        "patching.head_ablations": (_enum("patching", "head_ablations"), patching.HEAD_ABLATIONS),
        "patching.direction_position": (
            _enum("patching", "direction_position"),
            store.POSITIONS,
        ),
        "steering.position": (_enum("steering", "position"), steering.DIRECTION_POSITIONS),
        "vectors.specificity_probe": (_enum("vectors", "specificity_probe"), vectors.PROBES),
        "steering.direction_contrast": (
            _enum("steering", "direction_contrast"),
            steering.DIRECTION_CONTRASTS,
        ),
        "steering.evaluators": (_enum("steering", "evaluators"), evaluators.NAMES),
        "vision.attributes": (_enum("vision", "attributes"), GRADED),
        "vision.readouts": (_enum("vision", "readouts"), readout.READOUTS),
        "vision.position": (_enum("vision", "position"), store.VISION_POSITIONS),
        "projectors.architectures": (
            _enum("projectors", "architectures"),
            projectors.ARCHITECTURES,
        ),
        "datasets.manifest.layout": (
            _prop("datasets")["additionalProperties"]["properties"]["manifest"]["properties"][
                "layout"
            ]["enum"],
            tuple(MANIFEST_LAYOUTS),
        ),
    }
    wrong = {key: (schema, list(code)) for key, (schema, code) in pairs.items()}
    wrong = {k: v for k, v in wrong.items() if sorted(v[0]) != sorted(v[1])}
    assert wrong == {}


def test_metric_words_have_one_definition():
    from circuitflow import patching

    assert not hasattr(patching, "DEFAULT_METRIC_WORDS")
    assert patching.PatchConfig().metric_words == schema_defaults("patching")["metric_words"]
