"""Mine dual-condition hard negatives from an embedding ensemble and fine-tune cross-encoder rerankers."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "mine_hard_negatives"]


def __getattr__(name: str):
    # Imported on first use: `import hn_trainer` stays free of torch and datasets.
    if name == "mine_hard_negatives":
        from hn_trainer.mining.hard_negatives import mine_hard_negatives

        return mine_hard_negatives
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
