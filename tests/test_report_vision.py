"""Vision figures of the report on small constructed tables."""

import numpy as np
import pandas as pd

from circuitflow import report
from circuitflow.report.vision import _hook_order


def test_vision_figures_draw(tmp_path):
    hooks = ["vision.blocks.1.hook_resid_post", "blocks.0.hook_resid_post"]
    hooks += ["vision.blocks.0.hook_resid_post"]
    assert _hook_order(hooks) == [hooks[2], hooks[0], hooks[1]]
    probes = pd.DataFrame(
        {
            "model": "m",
            "hook": hooks * 2,
            "position": "mean",
            "target": ["exposure"] * 3 + ["composition"] * 3,
            "kind": ["regression"] * 3 + ["classification"] * 3,
            "score": [0.9, 0.5, 0.7, 0.4, 0.5, 0.3],
            "chance": [0.0] * 3 + [0.33] * 3,
        }
    )
    report.save(report.probe_scores_by_layer(probes), tmp_path / "probes.png")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    rows = [
        {"frame_id": "a", "label": "original", "attribute": "original", "level": 0.0},
        {"frame_id": "a", "label": "exposure_low", "attribute": "exposure", "level": -1.0},
        {"frame_id": "a", "label": "exposure_high", "attribute": "exposure", "level": 1.0},
        {"frame_id": "a", "label": "tilt", "attribute": "tilt", "level": 3.0},
    ]
    rows = [{**r, "image_index": i} for i, r in enumerate(rows)]
    report.save(report.stimulus_grid(rows, images, "a"), tmp_path / "grid.png")
    table = pd.DataFrame(
        {
            "hook": [h for h in hooks for _ in range(4)],
            "attribute": "exposure",
            "arm": ["treatment", "treatment", "control", "control"] * 3,
            "recovery": rng.standard_normal(12),
        }
    )
    fig = report.vision_effect_by_layer(table, "recovery", "t", "recovery")
    report.save(fig, tmp_path / "patching.png")
    assert all(
        (tmp_path / f).stat().st_size > 0 for f in ("probes.png", "grid.png", "patching.png")
    )


def test_decodability_along_tower_projector_and_lm(tmp_path):
    """The first hook reaching 90% of an attribute's best score, in forward order across the
    stages; a target at chance is not marked decodable."""
    hooks = ["blocks.0.hook_resid_post", "projector.hook_out", "vision.blocks.1.hook_out"]
    hooks += ["vision.blocks.0.hook_out"]
    probes = pd.DataFrame(
        {
            "model": "vlm",
            "hook": hooks * 2,
            "position": "mean",
            "target": ["exposure"] * 4 + ["composition"] * 4,
            "score": [0.3, 0.95, 0.5, 0.2, 0.34, 0.33, 0.33, 0.33],
            "chance": [0.0] * 4 + [0.33] * 4,
        }
    )
    first = report.first_decodable(probes).set_index("target")
    assert first.loc["exposure", "first_hook"] == "projector.hook_out"
    assert first.loc["exposure", "first_stage"] == "projector"
    assert first.loc["exposure", "projector_score"] == 0.95
    assert first.loc["composition", "best_hook"] == "blocks.0.hook_resid_post"
    assert not first.loc["composition", "decodable"] and first.loc["exposure", "decodable"]
    encoder = probes.assign(model="cnn", hook=probes.hook.str.replace("vision.", ""))
    encoder = encoder[encoder.hook.str.startswith("blocks.")]
    assert set(report.first_decodable(encoder).first_stage) == {"encoder"}
    fig = report.decodability_by_stage(pd.concat([probes, encoder]))
    report.save(fig, tmp_path / "decodability.png")
    assert (tmp_path / "decodability.png").stat().st_size > 0
