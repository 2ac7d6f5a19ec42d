"""hwnas: hardware-aware neural architecture search (library; no printing, no CLI parsing)."""

__version__ = "0.1.0"
