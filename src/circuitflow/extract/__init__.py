"""The extract phase: activations of a dataset through a model into one Zarr store.

``text``: prompts through a TransformerBridge (pooled residuals, per-head outputs, per-token
residuals); ``images``: photos through a vision encoder or VLM, in the same layout.
"""

from circuitflow.extract.images import extract_images_to_zarr
from circuitflow.extract.text import (
    COORDS_ATTR,
    SITE_ORDER,
    STORE_DTYPES,
    ExtractConfig,
    ExtractionError,
    extract_to_zarr,
    finite_for_store,
)

__all__ = [
    "COORDS_ATTR",
    "SITE_ORDER",
    "STORE_DTYPES",
    "ExtractConfig",
    "ExtractionError",
    "extract_images_to_zarr",
    "extract_to_zarr",
    "finite_for_store",
]
