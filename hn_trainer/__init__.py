"""Mine dual-condition hard negatives from an embedding ensemble and fine-tune cross-encoder rerankers."""

from __future__ import annotations

__version__ = "0.1.0"
