"""Mine hard negatives, fine-tune a cross-encoder reranker and evaluate it.

One process:
    python recipes/train_reranker.py --config recipes/configs/scifact.yaml

Several GPUs (or two CPU processes), through Accelerate:
    accelerate launch --config_file accelerate_configs/multi_gpu.yaml recipes/train_reranker.py \
        --config recipes/configs/scifact.yaml
    accelerate launch --config_file accelerate_configs/cpu.yaml recipes/train_reranker.py \
        --config recipes/configs/scifact.yaml

Every field of the config is also a flag (``--learning_rate 3e-5``); ``--help`` lists them.
"""

from __future__ import annotations

import sys

from hn_trainer.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
