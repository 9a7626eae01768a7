"""The built-in demo: cloud-documentation passages and questions, in BEIR layout."""

from __future__ import annotations

from pathlib import Path


def demo_path() -> Path:
    """Folder of the demo dataset shipped with the package."""
    return Path(__file__).resolve().parent
