"""Marketflow: Dagster asset-based platform for near-real-time cryptocurrency analytics."""

__version__ = "0.1.0"  # fallback of `marketflow --version`; keep equal to pyproject.toml
