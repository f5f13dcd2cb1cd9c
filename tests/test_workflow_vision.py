"""The vision track through the same rules: a tiny random open_clip ViT, a tiny random LLaVA and
a tiny assembled VLM (that ViT -> a linear projector -> a tiny Llama; local folders built
in-process) on a few builtin photographs, build_images -> prepare_model -> extract_activations
-> directions / probes -> patch_vision / steer_vision / train_image_sae -> effect_sizes, and
plot_vision."""

import json

import pandas as pd
import pytest
from test_workflow import snakemake
from tiny_models import build_clip_folder, build_llava_folder, build_model_folder

from circuitflow import models, sae, stats, store

pytestmark = pytest.mark.slow
TARGET = "results/stats/effect_sizes.csv"
CLIP_HOOKS = [f"blocks.{i}.hook_resid_post" for i in range(3)]
LLAVA_HOOKS = [
    "vision.blocks.0.hook_resid_post",
    "vision.blocks.1.hook_resid_post",
    "projector.hook_out",
    "blocks.0.hook_resid_post",
    "blocks.1.hook_resid_post",
]
VLM_HOOKS = [*LLAVA_HOOKS, "blocks.2.hook_resid_post"]  # its Llama has 3 blocks
VLMS = ("tiny-llava", "tiny-vlm")
# the image SAEs: tiny-clip's per_token_layers, tiny-llava's listed hooks, tiny-vlm's default
SAES = {
    "tiny-clip": ["blocks.1.hook_resid_post"],
    "tiny-llava": ["projector.hook_out", "vision.blocks.1.hook_resid_post"],
    "tiny-vlm": ["projector.hook_out"],
}


def _assembled_vlm(root) -> str:
    """A tiny assembled VLM folder: the tiny CLIP's blocks.1 tokens -> linear -> tiny Llama."""
    from circuitflow.models.assembled_vlm import AssembledVLM

    clip = build_clip_folder(root / "vlm-clip-src")
    spec = models.ModelSpec("enc", str(clip), family="vision-encoder", backend="open_clip")
    models.prepare_model(spec, root / "vlm-enc")
    lm = build_model_folder("llama", root / "vlm-lm", extra_special=("<image>",))
    vlm = AssembledVLM.from_parts(
        root / "vlm-enc", lm, "linear", "blocks.1.hook_resid_post", image_size=32, seed=0
    )
    return str(vlm.save(root / "vlm-src"))


def _config(clip, llava, vlm) -> dict:
    return {
        "seed": 0,
        "datasets": {
            "tinyimg": {
                "kind": "images",
                "images": {
                    "sources": ["builtin:astronaut", "builtin:coffee", "builtin:chelsea"],
                    "size": 32,
                    "work_size": 64,
                    "jitter_copies": 2,
                    "levels": {"exposure": [-2.0, 2.0], "contrast": [0.5, 2.0]},
                },
                "labels": [
                    "original",
                    "exposure_low",
                    "exposure_high",
                    "contrast_low",
                    "contrast_high",
                ],
                "baseline": "original",
                "test_fraction": 0.3,
            }
        },
        "models": {
            "tiny-clip": {
                "source": str(clip),
                "family": "vision-encoder",
                "backend": "open_clip",
                "per_token_layers": [1],
            },
            "tiny-llava": {"source": str(llava), "family": "vlm", "backend": "hf"},
            "tiny-vlm": {"source": vlm, "family": "vlm", "backend": "assembled"},
        },
        "sae": {
            "images": {
                "hooks": {"tiny-llava": SAES["tiny-llava"]},
                "n_epochs": 2,
                "batch_size": 64,
                "null_permutations": 2,
            }
        },
        "extract": {"batch_size": 8},
        "vision": {
            "attributes": ["exposure", "contrast"],
            # the tiny CLIP's 64-token text tower cannot embed real prompts; the CLIP prompt
            # readout is tested in test_vision_patching.py with a full-vocabulary tiny CLIP
            "readouts": ["probe"],
            "readout": 1.0,
            "split": "all",
            "patching": {"layers": "all", "modes": ["direction", "full"], "min_gap": 0.0},
            "steering": {
                "layers": [0.0, 1.0],
                "alphas_relative": [0.5],
                "random_seeds": [0],
                "describe_tokens": 4,
            },
        },
        "stats": {"bootstrap_resamples": 200},
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("wf-vision")
    config = _config(
        build_clip_folder(root / "clip-src"),
        build_llava_folder(root / "llava-src"),
        _assembled_vlm(root),
    )
    work = root / "work"
    snakemake(work, config, TARGET, "results/plots/vision")
    return work


def test_hooks_and_shapes_of_each_model(run):
    clip = store.open_dataset(run / "results/activations/tinyimg/tiny-clip.zarr")
    assert store.activation_hooks(run / "results/activations/tinyimg/tiny-clip.zarr") == CLIP_HOOKS
    n = len(store.read_samples(run / "results/datasets/tinyimg"))
    assert n == 3 * (2 + 4)  # photos x (originals + variants)
    assert clip["blocks.2.hook_resid_post"].shape == (n, 3, 32)
    llava = run / "results/activations/tinyimg/tiny-llava.zarr"
    assert set(LLAVA_HOOKS) <= set(store.activation_hooks(llava))
    ds = store.open_dataset(llava)
    assert ds["vision.blocks.1.hook_resid_post"].shape[-1] == 32
    assert ds["blocks.1.hook_resid_post"].shape[-1] == 48


@pytest.mark.parametrize(
    ("model", "hooks"),
    [("tiny-clip", CLIP_HOOKS), ("tiny-llava", LLAVA_HOOKS), ("tiny-vlm", VLM_HOOKS)],
)
def test_patching_rows_per_hook_with_full_patch_recovery_one(run, model, hooks):
    t = pd.read_csv(run / f"results/patching/tinyimg/{model}/recovery.csv")
    assert list(dict.fromkeys(t["hook"])) == hooks  # forward order, up to the readout
    assert set(t["readout"]) == {hooks[-1]}
    assert set(t["attribute"]) == {"exposure", "contrast"}
    full = t[(t["mode"] == "full") & (t["arm"] == "treatment")]
    assert len(full) == len(hooks) * 3 * 4  # hooks x photos x (2 attributes x 2 levels)
    assert (full["recovery"] - 1).abs().max() < 1e-3
    assert {"treatment", "control"} == set(t[t["mode"] == "direction"]["arm"])
    assert store.verify(run / f"results/patching/tinyimg/{model}") == []


@pytest.mark.parametrize("model", ["tiny-clip", *VLMS])
def test_steering_rows_per_hook_alpha_and_direction(run, model):
    t = pd.read_csv(run / f"results/steering/tinyimg/{model}/samples.csv")
    assert len(set(t["hook"])) == 2
    assert set(t["direction"]) == {"attribute", "random:0"}
    assert len(t) == 2 * 2 * 12  # hooks x directions x pairs
    assert t["readout_shift"].notna().all()
    assert store.verify(run / f"results/steering/tinyimg/{model}") == []
    described = run / f"results/steering/tinyimg/{model}/descriptions.csv"
    assert described.exists() == (model == "tiny-llava")  # hf VLMs only
    if described.exists():
        d = pd.read_csv(described)
        assert set(d["hook"]) == {"vision.blocks.0.hook_resid_post"}  # the tower's steered hook
        assert len(d) == 2 * 12 and d["description_changed"].between(0, 1).all()
        assert d["tokens_unsteered"].str.split().str.len().eq(4).all()


def test_effect_sizes_have_vision_patching_and_steering_rows_for_each_model(run):
    table = pd.read_csv(run / TARGET)
    assert list(table.columns) == stats.EFFECT_COLUMNS
    for phase in ("probes", "patching", "steering"):
        part = table[table.phase == phase]
        assert set(part.model) == {"tiny-clip", *VLMS}, phase
    patching = table[table.phase == "patching"]
    assert set(patching[patching.model == "tiny-clip"].metric) == {"recovery"}
    # the VLMs' LM heads are patched at the image tokens too
    assert set(patching.metric) == {"recovery", "image_head_patch_recovery"}
    assert {"vs_baseline", "vs_random_control"} <= set(patching.comparison)
    steering = table[table.phase == "steering"]
    assert set(steering.condition) == {"exposure", "contrast"}
    metrics = steering.groupby("model").metric.unique().map(set).to_dict()
    assert metrics == {
        "tiny-clip": {"readout_shift"},
        "tiny-llava": {"readout_shift", "description_changed"},
        "tiny-vlm": {"readout_shift"},
    }


@pytest.mark.parametrize("model", VLMS)
def test_projector_is_a_probe_and_direction_site_between_tower_and_lm(run, model):
    probes = pd.read_csv(
        run / f"{store.PROBES_DIR.format(dataset='tinyimg', model=model)}/probes.csv"
    )
    order = list(dict.fromkeys(probes.hook))
    assert order.index("projector.hook_out") == order.index("vision.blocks.1.hook_resid_post") + 1
    assert order.index("projector.hook_out") + 1 == order.index("blocks.0.hook_resid_post")
    proj = probes[probes.hook == "projector.hook_out"]
    assert set(proj.site) == {"projector.hook_out"} and set(proj.layer) == {0}
    assert {"exposure", "contrast"} <= set(proj.target) and proj.score.notna().all()
    vectors = store.open_dataset(run / store.VECTORS.format(dataset="tinyimg", model=model))
    assert "projector.hook_out" in list(vectors.hook.values)
    table = pd.read_csv(run / TARGET)
    rows = table[(table.phase == "probes") & (table.model == model)]
    assert "projector.hook_out" in set(rows.site)
    assert (run / "results/plots/vision/tinyimg__decodability.png").stat().st_size > 0


@pytest.mark.parametrize(("model", "hook"), [(m, h) for m, hs in SAES.items() for h in hs])
def test_image_saes_with_photo_units_and_a_permuted_label_null(run, model, hook):
    out = run / store.SAE_DIR.format(dataset="tinyimg", model=model, hook=hook, architecture="topk")
    assert store.verify(out) == []
    cfg = json.loads((out / sae.CFG_FILE).read_text())
    assert cfg["metadata"]["hook_name"] == hook and cfg["architecture"] == "topk"
    metrics = json.loads((out / sae.METRICS_FILE).read_text())
    assert metrics["n_photos"] == {"train": 2, "test": 1} and metrics["d_sae"] == 2 * cfg["d_in"]
    assert set(metrics["features"]["null"]) == {"permuted0", "permuted1"}
    features = pd.read_csv(out / sae.FEATURES_FILE)
    assert set(features.label) == {"exposure_low", "exposure_high", "contrast_low", "contrast_high"}
    assert features.auroc_vs_baseline.between(0, 1).all() and (features.n_photos == 1).all()
    m = stats.validate_measurements(pd.read_csv(out / store.MEASUREMENTS_FILE))
    assert set(m.metric) == {sae.IMAGE_METRIC, sae.NULL_METRIC} and set(m.unit_kind) == {"photo"}
    rows = pd.read_csv(run / TARGET)
    rows = rows[
        (rows.phase == "sae")
        & (rows.model == model)
        & (rows.site == store.parse_hook_name(hook)[1])
    ]
    assert set(rows.metric) == {sae.IMAGE_METRIC, sae.NULL_METRIC}
    assert rows.note.str.contains("1 units < min_n 3").all()  # one test photo: untested, p = 1
