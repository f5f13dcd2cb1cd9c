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
