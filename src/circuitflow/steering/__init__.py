"""Steering phase: add directions to a model's activations and measure what changes.

- :mod:`.text`: language models, steered while generating (configurations, the KV-cache
  aware hook, the batched sweep);
- :mod:`.sweep`: the text job (directions and norms from the stores, evaluator scores);
- :mod:`.vision`: vision encoders and VLMs, steered towards an image's good attribute level
  and read out by the attribute probe, CLIP prompts or the VLM's description.
"""

from circuitflow.steering.sweep import (
    load_directions,
    mean_residual_norm,
    sample_measurements,
    sample_rows,
    sweep_table,
)
from circuitflow.steering.text import (
    DIRECTION_POSITIONS,
    UNSTEERED,
    Generation,
    Prompt,
    SteerConfig,
    Steerer,
    SteeringError,
    SteeringParams,
    build_configs,
    encode_prompts,
    run_sweep,
    select_prompts,
)
from circuitflow.steering.vision import (
    VisionSteerConfig,
    VisionSteeringError,
    add_vectors,
    description_hooks,
    description_measurement_rows,
    description_prompt_ids,
    generate_description,
    image_measurement_rows,
    mean_pooled_norm,
    run_descriptions,
    run_steering,
    steer_hooks,
)

__all__ = [
    "sample_measurements",
    "DIRECTION_POSITIONS",
    "UNSTEERED",
    "Generation",
    "Prompt",
    "SteerConfig",
    "Steerer",
    "SteeringError",
    "SteeringParams",
    "VisionSteerConfig",
    "VisionSteeringError",
    "add_vectors",
    "build_configs",
    "description_hooks",
    "description_measurement_rows",
    "description_prompt_ids",
    "encode_prompts",
    "generate_description",
    "image_measurement_rows",
    "load_directions",
    "mean_pooled_norm",
    "mean_residual_norm",
    "run_descriptions",
    "run_steering",
    "run_sweep",
    "sample_rows",
    "select_prompts",
    "steer_hooks",
    "sweep_table",
]
