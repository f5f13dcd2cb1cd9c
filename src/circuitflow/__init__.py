"""circuitflow: find and test emotion and aesthetics circuits in neural networks."""

__version__ = "0.1.0"
