"""bf16 autocast against fp32 on the CPU, for cross-encoder training steps and scoring.

The question: should CPU training and evaluation run under ``torch.autocast("cpu", dtype=torch.bfloat16)``
(what ``--bf16 true`` does in the HF Trainer)? Only if it is faster at equal quality. CPUs with AVX-512 BF16 or
AMX run bf16 matrix products natively; others emulate them, and there bf16 is slower.

What it measures, on one cross-encoder (default: the packaged all-MiniLM-L6-v2 body with a fresh one-logit
head, resolved offline) and real SciFact (query, abstract) pairs:

* training: pairs per second of forward + backward + AdamW step on batches of ``--batch`` pairs at
  ``--max_length`` tokens, fp32 and bf16 autocast, the same batches, after ``--warmup`` untimed steps;
* scoring: pairs per second of ``CrossEncoder.predict`` on ``--score_pairs`` pairs, both ways;
* agreement: the largest absolute difference between the fp32 and bf16 scores, and the fraction of queries
  whose top-ranked candidate is the same (scores of a query's candidates compared within the query).

Precisions alternate in order (fp32, bf16, bf16, fp32, ...) over ``--rounds`` to spread drift; each reports
its best round. The report records the CPU, its bf16 flags, the threads and the load average.

Example:
    HF_HUB_OFFLINE=1 python benchmarks/cpu_precision.py --data ../shared/data/scifact
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
RESULTS = REPO_ROOT / "benchmarks" / "results"


def _pairs(data_dir: str, n: int, seed: int) -> list[tuple[str, str, str]]:
    from hn_trainer.data import load_beir

    data = load_beir(data_dir)
    queries = dict(zip(data.queries["_id"], data.queries["text"]))
    docs = dict(zip(data.corpus["_id"], data.document_texts()))
    ids = list(docs)
    rng = random.Random(seed)
    out = []
    for q, d in data.pairs("train"):
        out.append((q, queries[q], docs[d]))
        for other in rng.sample(ids, 3):
            out.append((q, queries[q], docs[other]))
        if len(out) >= n:
            break
    return out[:n]


def _autocast(precision: str):
    import torch

    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_rate(model, batches, precision: str, warmup: int) -> float:
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    model.train()
    start = None
    for i, batch in enumerate(batches):
        if i == warmup:
            start = time.perf_counter()
        tokens = model.preprocess(batch)
        with _autocast(precision):
            logits = model(tokens)["scores"].view(-1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), torch.zeros_like(logits.float()))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    return (len(batches) - warmup) * len(batches[0]) / (time.perf_counter() - start)


def score(model, pairs, precision: str, batch: int):
    import torch

    start = time.perf_counter()
    with _autocast(precision):
        scores = model.predict(pairs, batch_size=batch, show_progress_bar=False, convert_to_numpy=True,
                               activation_fn=torch.nn.Identity())  # raw logits: a sigmoid would hide differences
    return len(pairs) / (time.perf_counter() - start), scores.astype("float64")


def main(argv=None) -> dict:
    import copy

    import numpy as np
    import torch

    from benchmarks._machine import load_average, machine_info
    from hn_trainer.training import load_reranker
    from hn_trainer.training.training_args import cpu_bf16_flags

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data/scifact")
    parser.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--max_length", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--score_pairs", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=str(RESULTS / "cpu_precision.json"))
    args = parser.parse_args(argv)

    load_before = load_average()
    torch.manual_seed(args.seed)
    rows = _pairs(args.data, max(args.score_pairs, args.batch * (args.steps + args.warmup)), args.seed)
    texts = [(q, d) for _, q, d in rows]
    batches = [texts[i * args.batch:(i + 1) * args.batch] for i in range(args.steps + args.warmup)]
    base = load_reranker(args.model, max_length=args.max_length)
    results: dict = {"train_pairs_per_s": {"fp32": [], "bf16": []}, "score_pairs_per_s": {"fp32": [], "bf16": []}}
    scores = {}
    order = []
    for r in range(args.rounds):
        order += ["fp32", "bf16"] if r % 2 == 0 else ["bf16", "fp32"]
    for precision in order:
        model = copy.deepcopy(base)  # every run trains from the same weights
        results["train_pairs_per_s"][precision].append(train_rate(model, batches, precision, args.warmup))
        rate, scores[precision] = score(base, texts[: args.score_pairs], precision, args.batch)
        results["score_pairs_per_s"][precision].append(rate)
        print(precision, {k: round(v[precision][-1], 2) for k, v in results.items()}, flush=True)
    query_of = [q for q, _, _ in rows[: args.score_pairs]]
    same_top, queries = 0, sorted(set(query_of))
    for q in queries:
        idx = [i for i, x in enumerate(query_of) if x == q]
        same_top += int(np.argmax(scores["fp32"][idx]) == np.argmax(scores["bf16"][idx]))
    report = {
        "machine": machine_info(), "cpu_bf16_flags": cpu_bf16_flags(), "load_before": load_before,
        "load_after": load_average(), "settings": vars(args),
        "best": {k: {p: max(v[p]) for p in v} for k, v in results.items()}, "runs": results,
        "max_abs_score_difference": float(np.max(np.abs(scores["fp32"] - scores["bf16"]))),
        "same_top_candidate": same_top / len(queries), "queries_compared": len(queries),
    }
    best = report["best"]
    report["bf16_over_fp32"] = {k: best[k]["bf16"] / best[k]["fp32"] for k in best}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("cpu_bf16_flags", "best", "bf16_over_fp32", "max_abs_score_difference",
                                             "same_top_candidate", "load_before", "load_after")}, indent=2))
    return report


if __name__ == "__main__":
    main()
