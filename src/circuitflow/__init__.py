"""circuitflow: find and test emotion and aesthetics circuits in neural networks."""

__version__ = "0.1.0"

from circuitflow.results import open_results as open_results  # noqa: E402 (needs __version__)
