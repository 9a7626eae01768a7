"""Training speed: `HardNegativeTrainer` against sentence-transformers' `CrossEncoderTrainer`.

Both trainers fine-tune the same base model (a one-logit cross-encoder on
``sentence-transformers/all-MiniLM-L6-v2`` by default, resolved offline with
`hn_trainer.training.resolve_model_path`) on the same (query, document, label) rows in the same
order, with the same batch size in rows, the same ``max_length``, the same optimiser settings and
the same precision:

* The rows come from the SciFact train qrels: each (query, positive) pair gives
  ``(query, positive, 1)`` then ``(query, negative, 0)``, the negative drawn at random (seeded)
  from the corpus among the documents that are not a positive of the query in any split. The
  pairs are shuffled once (seeded) and cut to a whole number of batches; both loaders then read
  them in that order.
* ``st``: ``CrossEncoder(path, num_labels=1, max_length=L)`` trained by ``CrossEncoderTrainer``
  with ``BinaryCrossEntropyLoss`` on a ``datasets.Dataset`` with columns
  ``query``/``document``/``label``, ``B`` rows per batch, a sequential batch sampler.
* ``ours``: ``HardNegativeTrainer`` with ``loss="bce"``, ``num_negatives=1``,
  ``negative_strategy="hardest"`` on a `HardNegativeDataset` whose pool for each pair is that
  one negative, ``B / 2`` pairs per batch (``B`` rows), the same sequential batch sampler; its
  collator turns each pair into the (query, positive, 1) and (query, negative, 0) rows.

A run trains ``warmup + steps`` optimiser steps. The clock starts when step ``warmup`` ends and
stops when step ``warmup + steps`` ends (``on_step_end`` of a trainer callback, after a CUDA
synchronise on GPU), so it covers data loading, picking negatives, tokenisation, forward,
backward and the optimiser step of ``steps`` steps, and leaves out model loading, data building
and the first steps. A forward pre-hook on the transformers model records the shape and the real
(non-padding) tokens of every batch; the timed batches must be identical for both trainers (same
token counts and ids checksum), which is checked and reported. Before training, the first batch
is also tokenised both ways and compared: ST's rows with its model's ``preprocess``, ours as its
loss does it, the collator's rows with its model's ``preprocess`` (``truncation="longest_first"``
at ``max_length``, dynamic padding on both sides).

Runs alternate in order to spread drift from other load on the machine: round 1 runs ST then
ours, round 2 ours then ST, and so on. Before round 1 an untimed 1 + 1 step run takes the
process's one-time costs (thread pools, CUDA context, allocator growth), which would otherwise
slow whichever run comes first (``--no-prime`` skips it). Each method's throughput is reported as
the best of its runs (the primary figure: other load only ever slows a run down) and as the
median. The verdict compares ours/ST (best over best) with the target of the performance issue:
at least 1.0x.

Example:
    HF_HUB_OFFLINE=1 python benchmarks/training_speed.py
    HF_HUB_OFFLINE=1 python benchmarks/training_speed.py --steps 40 --rounds 3
    HF_HUB_OFFLINE=1 python benchmarks/training_speed.py --profile   # cProfile of both trainers
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import gc
import hashlib
import io
import logging
import math
import os
import pstats
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks._machine import git_dirty, load_average
from benchmarks._machine import machine_info as base_machine_info

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "scifact"
DEFAULT_OUTPUT_DIR = REPO_ROOT / "benchmarks" / "results"
TRAINING_DIR = REPO_ROOT / "hn_trainer" / "training"
METHODS = ("st", "ours")
TARGET_RATIO = 1.0  # ours/ST pairs per second, from the performance issue
DEFAULT_STEPS = {"cpu": (3, 20), "cuda": (10, 200)}  # (warm-up, timed) steps per device type


# ----------------------------------------------------------------------------------------------
# Settings and data
# ----------------------------------------------------------------------------------------------


@dataclass
class Settings:
    """What one benchmark invocation measures."""

    model: str = DEFAULT_MODEL
    data: str = str(DEFAULT_DATA)
    split: str = "train"
    batch_rows: int = 16
    max_length: int = 256
    warmup: int = 3
    steps: int = 20
    rounds: int = 2
    seed: int = 42
    learning_rate: float = 5e-5
    device: str = "cpu"
    precision: str = "fp32"
    threads: int | None = None
    output_dir: str = str(DEFAULT_OUTPUT_DIR)
    profile: bool = False
    prime: bool = True
    methods: tuple[str, ...] = METHODS

    @property
    def batch_pairs(self) -> int:
        """(query, positive) pairs per batch for ours: each gives a positive and a negative row."""
        return self.batch_rows // 2


@dataclass
class BenchmarkData:
    """The fixed training rows and the lookups `HardNegativeDataset` needs to rebuild them."""

    query_ids: list[str]
    query_texts: list[str]
    doc_ids: list[str]
    doc_texts: list[str]
    pair_queries: list[int]  # query row of each pair, in training order
    pair_positives: list[int]  # corpus row of its positive
    pair_negatives: list[int]  # corpus row of its one negative
    query_positives: list[list[int]]  # corpus rows never used as negatives, per query row
    source: str = ""
    stats: dict[str, Any] = field(default_factory=dict)

    def rows(self) -> list[tuple[str, str, float]]:
        """``(query, document, label)`` in training order: each pair's positive, then its negative."""
        out = []
        for q, p, n in zip(self.pair_queries, self.pair_positives, self.pair_negatives):
            out.append((self.query_texts[q], self.doc_texts[p], 1.0))
            out.append((self.query_texts[q], self.doc_texts[n], 0.0))
        return out


def build_data(path: str, split: str, batch_pairs: int, seed: int) -> BenchmarkData:
    """SciFact (or any BEIR folder) pairs with one seeded random negative each, shuffled once."""
    import numpy as np

    from hn_trainer.data.beir import load_beir

    data = load_beir(path)
    query_index = data.query_index()
    corpus_index = data.corpus_index()
    pairs = [(query_index[q], corpus_index[d]) for q, d in data.pairs(split)]
    excluded: list[set[int]] = [set() for _ in query_index]
    for name in data.splits:
        for qid, docs in data.relevant(name).items():
            if qid in query_index:
                excluded[query_index[qid]].update(corpus_index[d] for d in docs if d in corpus_index)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(pairs))
    n_docs = len(corpus_index)
    usable = len(pairs) - len(pairs) % batch_pairs
    if usable == 0:
        raise SystemExit(f"{len(pairs)} {split} pairs in {path}: fewer than one batch of {batch_pairs}")
    pair_queries, pair_positives, pair_negatives = [], [], []
    for i in order[:usable].tolist():
        q, p = pairs[i]
        while True:
            n = int(rng.integers(n_docs))
            if n not in excluded[q]:
                break
        pair_queries.append(q)
        pair_positives.append(p)
        pair_negatives.append(n)
    return BenchmarkData(
        query_ids=list(data.queries["_id"]),
        query_texts=data.query_texts(),
        doc_ids=list(data.corpus["_id"]),
        doc_texts=data.document_texts(),
        pair_queries=pair_queries,
        pair_positives=pair_positives,
        pair_negatives=pair_negatives,
        query_positives=[sorted(s) for s in excluded],
        source=str(path),
        stats={
            "split": split,
            "pairs_in_split": len(pairs),
            "pairs_used": usable,
            "rows": 2 * usable,
            "queries": len(query_index),
            "documents": n_docs,
            "negatives": "random, seeded, never a positive of the query in any split",
        },
    )


# ----------------------------------------------------------------------------------------------
# Measurement
# ----------------------------------------------------------------------------------------------


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


class BatchRecorder:
    """Forward pre-hook on the encoder body: keeps each batch's ``input_ids``/``attention_mask``.

    It hooks the body (``model.base_model``) rather than the classifier because sentence-transformers
    calls the classifier's ``forward`` method directly, which skips hooks on that module.

    Only references are kept while training (no ``.item()``, so no extra GPU synchronisation);
    `summary` reads them afterwards.
    """

    def __init__(self) -> None:
        self.batches: list[tuple[Any, Any]] = []

    def __call__(self, module, args, kwargs):
        if module.training:
            input_ids = kwargs.get("input_ids", args[0] if args else None)
            self.batches.append((input_ids, kwargs.get("attention_mask")))

    def summary(self, first: int, count: int) -> dict[str, Any]:
        """Rows, padded and real tokens of batches ``first .. first + count - 1``."""
        import torch

        rows = widths = real = 0
        per_step = []
        for input_ids, mask in self.batches[first : first + count]:
            n_rows, width = (int(x) for x in input_ids.shape)
            n_real = int(mask.sum().item()) if mask is not None else n_rows * width
            weights = torch.arange(1, width + 1, device=input_ids.device, dtype=torch.long)
            checksum = int((input_ids.long() * weights).sum().item())
            rows += n_rows
            widths += width
            real += n_real
            per_step.append({"rows": n_rows, "width": width, "tokens": n_real, "checksum": checksum})
        return {
            "batches": len(per_step),
            "rows": rows,
            "tokens": real,
            "padded_tokens": sum(s["rows"] * s["width"] for s in per_step),
            "mean_tokens_per_pair": real / rows if rows else math.nan,
            "mean_width": widths / len(per_step) if per_step else math.nan,
            "max_width": max((s["width"] for s in per_step), default=0),
            "per_step": per_step,
        }


def _make_timer(warmup: int, steps: int, device: str):
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Wall-clock time at the end of every optimiser step; synchronised at the window's ends."""

        def __init__(self) -> None:
            self.ends: dict[int, float] = {}

        def on_step_end(self, args, state, control, **kwargs):
            step = state.global_step
            if step in (warmup, warmup + steps):
                _sync(device)
            self.ends[step] = time.perf_counter()

        def on_train_begin(self, args, state, control, **kwargs):
            _sync(device)
            self.ends[0] = time.perf_counter()

    return StepTimer()


def _common_args(settings: Settings, output_dir: str) -> dict[str, Any]:
    """TrainingArguments both trainers share (everything else stays at the transformers defaults)."""
    return {
        "output_dir": output_dir,
        "max_steps": settings.warmup + settings.steps,
        "learning_rate": settings.learning_rate,
        "seed": settings.seed,
        "bf16": settings.precision == "bf16",
        "fp16": settings.precision == "fp16",
        "use_cpu": settings.device == "cpu",
        "save_strategy": "no",
        "eval_strategy": "no",
        "logging_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
    }


def sequential_batches(dataset, batch_size, drop_last, **kwargs):
    """The ``batch_sampler`` of both trainers: batches in dataset order."""
    from torch.utils.data import SequentialSampler

    try:
        from sentence_transformers.base.sampler import DefaultBatchSampler
    except ImportError:  # sentence-transformers before the base/ package
        from sentence_transformers.sampler import DefaultBatchSampler

    return DefaultBatchSampler(SequentialSampler(dataset), batch_size=batch_size, drop_last=drop_last)


def transformers_model(cross_encoder):
    """The transformers model inside a `CrossEncoder` (where `BatchRecorder` hooks its body)."""
    body = cross_encoder[0]
    return getattr(body, "model", None) or body.auto_model


def build_st_trainer(settings: Settings, data: BenchmarkData, model_path: str, output_dir: str):
    """sentence-transformers' CrossEncoderTrainer with BinaryCrossEntropyLoss on the fixed rows."""
    import datasets
    from sentence_transformers.cross_encoder import (
        CrossEncoder,
        CrossEncoderTrainer,
        CrossEncoderTrainingArguments,
    )
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss
    from transformers import set_seed

    rows = data.rows()
    dataset = datasets.Dataset.from_dict(
        {
            "query": [r[0] for r in rows],
            "document": [r[1] for r in rows],
            "label": [r[2] for r in rows],
        }
    )
    set_seed(settings.seed)
    model = CrossEncoder(
        model_path, num_labels=1, max_length=settings.max_length, device=settings.device
    )
    args = CrossEncoderTrainingArguments(
        per_device_train_batch_size=settings.batch_rows,
        batch_sampler=sequential_batches,
        **_common_args(settings, output_dir),
    )
    trainer = CrossEncoderTrainer(
        model=model, args=args, train_dataset=dataset, loss=BinaryCrossEntropyLoss(model)
    )
    return trainer, transformers_model(model), model.tokenizer


def build_ours_trainer(settings: Settings, data: BenchmarkData, model_path: str, output_dir: str):
    """HardNegativeTrainer (BCE, one hardest negative from a one-document pool) on the same rows."""
    import numpy as np

    from hn_trainer.training import (
        HardNegativeDataset,
        HardNegativeTrainer,
        HardNegativeTrainingArguments,
    )

    dataset = HardNegativeDataset(
        data.query_ids,
        data.query_texts,
        data.doc_ids,
        data.doc_texts,
        data.pair_queries,
        data.pair_positives,
        np.asarray(data.pair_negatives, dtype=np.int64).reshape(-1, 1),
        data.query_positives,
    )
    args = HardNegativeTrainingArguments(
        per_device_train_batch_size=settings.batch_pairs,
        loss="bce",
        num_negatives=1,
        negative_strategy="hardest",
        max_length=settings.max_length,
        batch_sampler=sequential_batches,
        **_common_args(settings, output_dir),
    )
    trainer = HardNegativeTrainer(model_path, args, train_dataset=dataset)
    return trainer, transformers_model(trainer.model), trainer.model.tokenizer


BUILDERS = {"st": build_st_trainer, "ours": build_ours_trainer}


def _optimizer_settings(trainer) -> dict[str, Any]:
    args = trainer.args
    optimizer = getattr(trainer, "optimizer", None)
    return {
        "optim": str(getattr(args.optim, "value", args.optim)),
        "optimizer_class": type(getattr(optimizer, "optimizer", optimizer)).__name__ if optimizer else None,
        "learning_rate": args.learning_rate,
        "weight_decay": args.weight_decay,
        "lr_scheduler": str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)),
        "warmup_steps": args.warmup_steps,
        "max_grad_norm": args.max_grad_norm,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "bf16": args.bf16,
        "fp16": args.fp16,
    }


def run_once(
    method: str, settings: Settings, data: BenchmarkData, model_path: str, profile: bool = False
) -> dict[str, Any]:
    """Build one trainer (not timed), train ``warmup + steps`` steps, return the timed window's figures."""
    import torch

    with tempfile.TemporaryDirectory(prefix=f"training-speed-{method}-") as output_dir:
        t_build = time.perf_counter()
        trainer, hf_model, _ = BUILDERS[method](settings, data, model_path, output_dir)
        build_seconds = time.perf_counter() - t_build
        recorder = BatchRecorder()
        hook = hf_model.base_model.register_forward_pre_hook(recorder, with_kwargs=True)
        timer = _make_timer(settings.warmup, settings.steps, settings.device)
        trainer.add_callback(timer)
        load = os.getloadavg() if hasattr(os, "getloadavg") else None
        profiler = cProfile.Profile() if profile else None
        t_train = time.perf_counter()
        try:
            if profiler is not None:
                profiler.enable()
            trainer.train()
        finally:
            if profiler is not None:
                profiler.disable()
            hook.remove()
        train_seconds = time.perf_counter() - t_train
        first, last = settings.warmup, settings.warmup + settings.steps
        if first not in timer.ends or last not in timer.ends:
            raise RuntimeError(f"{method}: the run ended at step {max(timer.ends)} before step {last}")
        seconds = timer.ends[last] - timer.ends[first]
        batches = recorder.summary(first, settings.steps)
        step_seconds = [timer.ends[s] - timer.ends[s - 1] for s in range(first + 1, last + 1)]
        result = {
            "method": method,
            "seconds": seconds,
            "steps": settings.steps,
            "rows": batches["rows"],
            "pairs_per_s": batches["rows"] / seconds,
            "steps_per_s": settings.steps / seconds,
            "tokens_per_s": batches["tokens"] / seconds,
            "padded_tokens_per_s": batches["padded_tokens"] / seconds,
            "mean_tokens_per_pair": batches["mean_tokens_per_pair"],
            "mean_width": batches["mean_width"],
            "max_width": batches["max_width"],
            "median_step_s": statistics.median(step_seconds),
            "step_seconds": step_seconds,
            "warmup_seconds": timer.ends[first] - timer.ends[0],
            "build_seconds": build_seconds,
            "train_seconds": train_seconds,
            "load_average_before": load,
            "optimizer": _optimizer_settings(trainer),
            "batches": batches["per_step"],
        }
        if profiler is not None:
            result["profile"] = _profile_text(profiler, method, seconds, settings)
        del trainer, hf_model, recorder
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


def _profile_text(profiler: cProfile.Profile, method: str, seconds: float, settings: Settings) -> str:
    buffer = io.StringIO()
    buffer.write(
        f"===== {method}: cProfile of trainer.train() ({settings.warmup} + {settings.steps} steps; "
        f"timed window {seconds:.2f} s with the profiler on) =====\n"
    )
    for key in ("cumulative", "tottime"):
        buffer.write(f"\n--- sorted by {key} ---\n")
        stats = pstats.Stats(profiler, stream=buffer)
        stats.strip_dirs().sort_stats(key).print_stats(35)
    return buffer.getvalue()


def check_tokenization(settings: Settings, data: BenchmarkData, model_path: str) -> dict[str, Any]:
    """Tokenise the first batch as each trainer does and compare (rows, labels, ids, mask, truncation).

    ST: its rows through its model's ``preprocess``. Ours: the rows `HardNegativeCollator` builds from the
    pairs, through the ``preprocess`` of the model `load_reranker` gives, as `BinaryCrossEntropyLoss` does.
    """
    import numpy as np
    import torch
    from sentence_transformers.cross_encoder import CrossEncoder

    from hn_trainer.training import HardNegativeCollator, HardNegativeDataset, load_reranker

    cross_encoder = CrossEncoder(model_path, num_labels=1, max_length=settings.max_length, device="cpu")
    rows = data.rows()[: settings.batch_rows]
    st_features = cross_encoder.preprocess([(q, d) for q, d, _ in rows])
    reranker = load_reranker(model_path, max_length=settings.max_length, device="cpu")
    tokenizer = reranker.tokenizer
    dataset = HardNegativeDataset(
        data.query_ids,
        data.query_texts,
        data.doc_ids,
        data.doc_texts,
        data.pair_queries[: settings.batch_pairs],
        data.pair_positives[: settings.batch_pairs],
        np.asarray(data.pair_negatives[: settings.batch_pairs], dtype=np.int64).reshape(-1, 1),
        data.query_positives,
    )
    collator = HardNegativeCollator(
        preprocess_fn=reranker.preprocess,
        pool=dataset,
        layout="pair",
        num_negatives=1,
        strategy="hardest",
        seed=settings.seed,
    )
    batch = collator([{"pair_index": i} for i in range(len(dataset))])
    ours = reranker.preprocess(list(zip(batch["query"], batch["document"])))
    same_shape = ours["input_ids"].shape == st_features["input_ids"].shape
    same = same_shape and all(
        torch.equal(ours[k], st_features[k]) for k in ("input_ids", "attention_mask", "token_type_ids")
        if k in ours and k in st_features
    )
    untruncated = tokenizer(
        [q for q, _, _ in rows], [d for _, d, _ in rows], truncation=False, padding=False
    )["input_ids"]
    labels_equal = batch["label"].tolist() == [r[2] for r in rows]
    result = {
        "identical": bool(same and labels_equal),
        "ours_shape": list(ours["input_ids"].shape),
        "st_shape": list(st_features["input_ids"].shape),
        "truncation": "longest_first",
        "max_length": settings.max_length,
        "pairs_over_max_length": sum(len(ids) > settings.max_length for ids in untruncated),
        "pairs_checked": len(rows),
    }
    del cross_encoder, reranker
    gc.collect()
    return result


# ----------------------------------------------------------------------------------------------
# Machine and report
# ----------------------------------------------------------------------------------------------


def _training_hash() -> str:
    digest = hashlib.sha256()
    for path in sorted(TRAINING_DIR.glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def machine_info(settings: Settings) -> dict[str, Any]:
    """The machine (see ``benchmarks._machine``), library versions, device and training package state."""
    import accelerate
    import datasets
    import sentence_transformers
    import tokenizers
    import torch
    import transformers

    return {
        **base_machine_info(),
        "load_average_at_start": load_average(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "sentence_transformers": sentence_transformers.__version__,
        "datasets": datasets.__version__,
        "accelerate": accelerate.__version__,
        "tokenizers": tokenizers.__version__,
        "device": settings.device,
        "precision": settings.precision,
        "gpu": torch.cuda.get_device_name() if settings.device.startswith("cuda") else None,
        "training_package_sha256": _training_hash(),
        "training_package_modified": git_dirty("hn_trainer/training"),
        "tokenizers_parallelism": os.environ.get("TOKENIZERS_PARALLELISM"),
    }


def summarise(runs: list[dict[str, Any]], methods: tuple[str, ...]) -> dict[str, Any]:
    """Best and median per method, the ours/ST ratios and the verdict."""
    per_method: dict[str, Any] = {}
    for method in methods:
        mine = [r for r in runs if r["method"] == method]
        if not mine:
            continue
        best = max(mine, key=lambda r: r["pairs_per_s"])
        per_method[method] = {
            "runs": len(mine),
            "best_pairs_per_s": best["pairs_per_s"],
            "median_pairs_per_s": statistics.median(r["pairs_per_s"] for r in mine),
            "best_tokens_per_s": best["tokens_per_s"],
            "median_tokens_per_s": statistics.median(r["tokens_per_s"] for r in mine),
            "best_steps_per_s": best["steps_per_s"],
            "mean_tokens_per_pair": best["mean_tokens_per_pair"],
            "mean_width": best["mean_width"],
        }
    summary: dict[str, Any] = {"methods": per_method}
    if "st" in per_method and "ours" in per_method:
        st, ours = per_method["st"], per_method["ours"]
        ratio = ours["best_pairs_per_s"] / st["best_pairs_per_s"]
        summary["ratio_best"] = ratio
        summary["ratio_median"] = ours["median_pairs_per_s"] / st["median_pairs_per_s"]
        summary["ratio_per_round"] = _ratios_per_round(runs)
        summary["target"] = TARGET_RATIO
        summary["verdict"] = "PASS" if ratio >= TARGET_RATIO else "FAIL"
        summary["same_batches"] = _same_batches(runs)
        summary["same_optimizer"] = _same_optimizer(runs)
    return summary


def _ratios_per_round(runs: list[dict[str, Any]]) -> list[float]:
    out = []
    for round_index in sorted({r["round"] for r in runs}):
        by = {r["method"]: r for r in runs if r["round"] == round_index}
        if "st" in by and "ours" in by:
            out.append(by["ours"]["pairs_per_s"] / by["st"]["pairs_per_s"])
    return out


def _same_batches(runs: list[dict[str, Any]]) -> bool:
    """Whether every timed run saw the same batches (rows, width, real tokens, ids checksum per step)."""
    signatures = {
        tuple((b["rows"], b["width"], b["tokens"], b["checksum"]) for b in r["batches"]) for r in runs
    }
    return len(signatures) == 1


def _same_optimizer(runs: list[dict[str, Any]]) -> bool:
    """Whether every run used the same optimiser, schedule and precision.

    The per-device batch size is left out: it counts rows for ST and pairs for ours, by design.
    """
    settings = [{k: v for k, v in r["optimizer"].items() if k != "per_device_train_batch_size"} for r in runs]
    return all(s == settings[0] for s in settings)


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def to_markdown(report: dict[str, Any]) -> str:
    info, settings, summary = report["machine"], report["settings"], report["summary"]
    tok, opt, data = report["tokenization"], report["optimizer"], report["data"]
    yes = {True: "yes", False: "NO"}
    machine = (
        f"Machine: {info['cpu']}, {info['cpu_count']} cores ({info['affinity_cpus']} usable, torch threads "
        f"{info['torch_threads']}), device {info['device']}"
        + (f" ({info['gpu']})" if info.get("gpu") else "")
        + f", precision {info['precision']}; torch {info['torch']}, transformers {info['transformers']}, "
        f"sentence-transformers {info['sentence_transformers']}, datasets {info['datasets']}, "
        f"accelerate {info['accelerate']}, tokenizers {info['tokenizers']}; {info['date']}; "
        f"git {info.get('git_commit', '?')}"
        + (" (training package modified)" if info.get("training_package_modified") else "")
        + f"; load average at start {_load(info['load_average_at_start'])}."
    )
    setup = (
        f"Model `{settings['model']}` as a one-logit cross-encoder (fresh head); data `{settings['data']}` "
        f"{data['split']} qrels: {data['pairs_used']} (query, positive) pairs with one random negative "
        f"each, {data['rows']} rows, same order for both. Batch {settings['batch_rows']} rows "
        f"({settings['batch_pairs']} pairs x (1 positive + 1 negative) for ours), max_length "
        f"{settings['max_length']}, lr {settings['learning_rate']}, optimiser {opt['optim']} "
        f"({opt['optimizer_class']}), scheduler {opt['lr_scheduler']}; {settings['warmup']} warm-up steps, "
        f"then {settings['steps']} timed steps per run; {settings['rounds']} rounds, alternating order"
        + (", after an untimed priming run." if settings.get("prime") else ".")
        + " Tokenizer parallelism (TOKENIZERS_PARALLELISM): "
        + f"{info.get('tokenizers_parallelism') or 'default'}."
    )
    checks = (
        f"Tokenisation (first batch, `truncation=\"longest_first\"` at {settings['max_length']}, dynamic "
        f"padding): {'identical' if tok['identical'] else 'DIFFERENT'} for both trainers (shape ours "
        f"{tok['ours_shape']}, ST {tok['st_shape']}; {tok['pairs_over_max_length']} of "
        f"{tok['pairs_checked']} pairs truncated). Timed batches identical in every run (rows, width, real "
        f"tokens, ids checksum): {yes[bool(summary.get('same_batches'))]}. Same optimiser, schedule and "
        f"precision in every run: {yes[bool(summary.get('same_optimizer'))]}."
    )
    lines = ["# Training speed", "", f"Command: `{report['command']}`", ""]
    lines += [machine, "", setup, "", checks, ""]
    lines += [
        "| round | order | method | timed s | pairs/s | steps/s | tokens/s | padded tokens/s | tokens/pair "
        "| mean width | median step s | load avg before |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in report["runs"]:
        cells = [
            r["round"],
            r["order"],
            r["method"],
            _fmt(r["seconds"]),
            _fmt(r["pairs_per_s"]),
            _fmt(r["steps_per_s"], 3),
            _fmt(r["tokens_per_s"], 0),
            _fmt(r["padded_tokens_per_s"], 0),
            _fmt(r["mean_tokens_per_pair"], 1),
            _fmt(r["mean_width"], 1),
            _fmt(r["median_step_s"], 3),
            _load(r["load_average_before"]),
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += [
        "",
        "| method | runs | best pairs/s | median pairs/s | best tokens/s | median tokens/s | tokens/pair |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for method, s in summary["methods"].items():
        cells = [
            method,
            s["runs"],
            _fmt(s["best_pairs_per_s"]),
            _fmt(s["median_pairs_per_s"]),
            _fmt(s["best_tokens_per_s"], 0),
            _fmt(s["median_tokens_per_s"], 0),
            _fmt(s["mean_tokens_per_pair"], 1),
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    if "ratio_best" in summary:
        per_round = ", ".join(_fmt(x, 3) for x in summary["ratio_per_round"])
        lines += [
            "",
            "| target | status | detail |",
            "|---|---|---|",
            f"| ours/ST pairs per second >= {summary['target']:.1f}x (best run of each) | "
            f"{summary['verdict']} | {_fmt(summary['ratio_best'], 3)}x best/best; "
            f"{_fmt(summary['ratio_median'], 3)}x median/median; per round {per_round} |",
        ]
    lines += [
        "",
        "Pairs are (query, document) rows; tokens are real (non-padding) tokens of the timed batches. The "
        "clock runs from the end of the last warm-up step to the end of the last timed step: data loading, "
        "negative selection, tokenisation, forward, backward and optimiser step; model loading and data "
        "building are outside it. Best of each method is the primary figure (other load on the machine only "
        "slows a run).",
        "",
    ]
    return "\n".join(lines)


def _load(value) -> str:
    if not value:
        return "-"
    return "/".join(f"{x:.1f}" for x in value)


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Pairs per second of HardNegativeTrainer against sentence-transformers' "
        "CrossEncoderTrainer.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help="Base model (hub id served offline, or a folder)."
    )
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="BEIR folder (SciFact by default).")
    parser.add_argument("--split", default="train", help="Qrels split the pairs come from.")
    parser.add_argument("--batch-size", type=int, default=16, help="Rows (query, document) per step; even.")
    parser.add_argument("--max-length", type=int, default=256, help="Truncation length of a pair.")
    parser.add_argument(
        "--warmup", type=int, default=None, help="Untimed steps (default: 3 on CPU, 10 on GPU)."
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="Timed steps (default: 20 on CPU, 200 on GPU)."
    )
    parser.add_argument(
        "--rounds", type=int, default=2, help="Rounds; odd rounds run ST first, even rounds ours first."
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--device", default="auto", help="'auto' (CUDA when available), 'cpu' or 'cuda'.")
    parser.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "bf16", "fp16"),
        help="'auto': fp32 on CPU, bf16 on a GPU that supports it, else fp16.",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's).")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument(
        "--no-prime",
        dest="prime",
        action="store_false",
        help="Skip the untimed 1 + 1 step run that takes the process's one-time costs before round 1.",
    )
    parser.add_argument("--output-dir", default=str(DEFAULT_OUTPUT_DIR))
    parser.add_argument(
        "--profile",
        action="store_true",
        help="Run each method once under cProfile and write training_speed_profile.txt (no JSON/markdown).",
    )
    return parser.parse_args(argv)


def settings_from_args(args: argparse.Namespace) -> Settings:
    import torch

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    kind = "cuda" if device.startswith("cuda") else "cpu"
    precision = args.precision
    if precision == "auto":
        if kind == "cpu":
            precision = "fp32"
        else:
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if args.batch_size < 2 or args.batch_size % 2:
        raise SystemExit("--batch-size counts rows (a positive and a negative per pair): an even number >= 2")
    warmup, steps = DEFAULT_STEPS[kind]
    return Settings(
        model=args.model,
        data=args.data,
        split=args.split,
        batch_rows=args.batch_size,
        max_length=args.max_length,
        warmup=args.warmup if args.warmup is not None else warmup,
        steps=args.steps if args.steps is not None else steps,
        rounds=args.rounds,
        seed=args.seed,
        learning_rate=args.learning_rate,
        device=device,
        precision=precision,
        threads=args.threads,
        output_dir=args.output_dir,
        profile=args.profile,
        prime=args.prime,
        methods=tuple(args.methods),
    )


def _command(argv: list[str] | None) -> str:
    argv = sys.argv[1:] if argv is None else argv
    return "HF_HUB_OFFLINE=1 python benchmarks/training_speed.py" + "".join(
        " " + shlex.quote(a) for a in argv
    )


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = parse_args(argv)
    settings = settings_from_args(args)
    import torch
    import transformers

    from hn_trainer.io import atomic_path, write_json
    from hn_trainer.training import resolve_model_path

    transformers.logging.set_verbosity_error()
    for name in ("sentence_transformers", "hn_trainer", "httpx"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    command = _command(argv)
    output_dir = Path(settings.output_dir)
    model_path = resolve_model_path(settings.model)
    info = machine_info(settings)
    logger.info("machine: %s, %s threads, device %s (%s)", info["cpu"], info["torch_threads"],
                settings.device, settings.precision)
    data = build_data(settings.data, settings.split, settings.batch_pairs, settings.seed)
    needed = (settings.warmup + settings.steps) * settings.batch_pairs
    if needed > len(data.pair_queries):
        logger.info("%d pairs per run > %d available: the runs go over the data more than once",
                    needed, len(data.pair_queries))

    if settings.profile:
        texts = []
        for method in settings.methods:
            logger.info("profiling %s", method)
            result = run_once(method, settings, data, model_path, profile=True)
            logger.info("%s: %.2f pairs/s under the profiler", method, result["pairs_per_s"])
            texts.append(result["profile"])
        with atomic_path(output_dir / "training_speed_profile.txt") as tmp:
            tmp.write_text(f"Command: {command}\n\n" + "\n\n".join(texts), encoding="utf-8")
        logger.info("wrote %s", output_dir / "training_speed_profile.txt")
        return None

    tokenization = check_tokenization(settings, data, model_path)
    logger.info("tokenisation identical: %s", tokenization["identical"])
    if settings.prime:
        # one-time costs of the process (thread pools, CUDA context and kernels, allocator growth) would
        # otherwise fall on the first timed run, always ST's in round 1
        logger.info("priming: an untimed 1 + 1 step run of %s", settings.methods[0])
        run_once(settings.methods[0], dataclasses.replace(settings, warmup=1, steps=1), data, model_path)
    runs = []
    for round_index in range(1, settings.rounds + 1):
        order = list(settings.methods) if round_index % 2 else list(reversed(settings.methods))
        for method in order:
            logger.info("round %d: %s (%d + %d steps)", round_index, method, settings.warmup, settings.steps)
            result = run_once(method, settings, data, model_path)
            result["round"] = round_index
            result["order"] = " then ".join(order)
            runs.append(result)
            logger.info(
                "round %d %s: %.2f pairs/s, %.0f tokens/s, %.1f tokens/pair (%.1f s timed)",
                round_index, method, result["pairs_per_s"], result["tokens_per_s"],
                result["mean_tokens_per_pair"], result["seconds"],
            )
    summary = summarise(runs, settings.methods)
    info["load_average_at_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    report = {
        "command": command,
        "machine": info,
        "settings": {**dataclasses.asdict(settings), "batch_pairs": settings.batch_pairs,
                     "model_path": model_path},
        "data": data.stats,
        "tokenization": tokenization,
        "optimizer": runs[0]["optimizer"],
        "runs": runs,
        "summary": summary,
    }
    write_json(output_dir / "training_speed.json", report)
    markdown = to_markdown(report)
    with atomic_path(output_dir / "training_speed.md") as tmp:
        tmp.write_text(markdown, encoding="utf-8")
    print(markdown)
    return report


if __name__ == "__main__":
    main()
