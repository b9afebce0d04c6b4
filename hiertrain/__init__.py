"""hiertrain: measure and repair hierarchical visual understanding in vision LLMs."""

__version__ = "0.1.0"
