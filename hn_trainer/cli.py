"""``hn-trainer``: mine hard negatives, train and evaluate rerankers, or run the built-in demo.

Each command reads its dataclass arguments from ``--config FILE.yaml`` and flags; ``hn-trainer
COMMAND --help`` lists them.
"""

from __future__ import annotations

import logging
import os
import sys

from hn_trainer.errors import HNTrainerError

COMMANDS = {
    "mine": "Mine hard negatives for the (query, positive) pairs of a split and write the triples.",
    "train": "Mine, fine-tune a cross-encoder reranker on the triples, and evaluate it.",
    "evaluate": "Rerank a first stage's candidates with a cross-encoder and report MRR, nDCG and recall.",
    "demo": "Mine, train and evaluate on the built-in cloud-documentation demo (a few minutes on a CPU).",
}


def _usage() -> str:
    lines = ["usage: hn-trainer [--version] COMMAND [--config FILE.yaml] [--FIELD VALUE ...]", "", "commands:"]
    lines += [f"  {name:<9} {text}" for name, text in COMMANDS.items()]
    return "\n".join(lines)


def _run(command: str, argv: list[str]) -> None:
    if command == "mine":
        from hn_trainer.config import DataArguments, MineOutputArguments, MiningArguments, parse_args

        # arguments first: --help and a bad flag answer before torch and datasets are imported
        args = parse_args((DataArguments, MiningArguments, MineOutputArguments), argv, prog="hn-trainer mine",
                          file_may_hold=_train_only_arguments)  # `hn-trainer train`'s config works here too
        from hn_trainer.mining.pipeline import run_mine

        run_mine(*args)
    elif command == "train":
        from hn_trainer.recipe import main as train_main

        train_main(argv)
    elif command == "evaluate":
        from hn_trainer.recipe import evaluate_main

        evaluate_main(argv)
    elif command == "demo":
        from hn_trainer.recipe import demo_main

        demo_main(argv)


def _train_only_arguments() -> tuple[type, ...]:
    """The argument dataclasses of ``hn-trainer train`` that ``mine`` lacks (a recipe config sets them too)."""
    from hn_trainer.recipe import EvaluationArguments, RecipeArguments
    from hn_trainer.training import HardNegativeTrainingArguments

    return HardNegativeTrainingArguments, EvaluationArguments, RecipeArguments


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in {"-h", "--help"}:
        print(_usage())
        return 0
    if argv[0] in {"-V", "--version"}:
        from hn_trainer import __version__

        print(f"hn-trainer {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"hn-trainer: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    for noisy in ("httpx", "urllib3", "filelock", "huggingface_hub", "sentence_transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        _run(command, rest)
        _leave_process_group()
    except HNTrainerError as e:
        print(f"hn-trainer {command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"hn-trainer {command}: interrupted", file=sys.stderr)
        return 130
    return 0


def _leave_process_group() -> None:
    """After a command under `accelerate launch`: wait for every rank, then destroy the process group, so that
    no rank exits while gloo or NCCL threads of another still run (an abort at interpreter exit otherwise)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        from accelerate import PartialState

        state = PartialState()
        state.wait_for_everyone()
        state.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
