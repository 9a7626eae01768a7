"""Mining speed: the dual-condition kernel against sentence-transformers and a matmul floor.

Three methods run on the same seeded, L2-normalised synthetic embeddings (``n_q`` queries,
``n_d`` documents, ``d`` dimensions, one random positive document per query):

* ``ours``: ``hn_trainer.mining.kernel.dual_condition_mine`` with both conditions.
* ``st``: ``sentence_transformers.util.mine_hard_negatives`` on its torch path (no FAISS), fed
  the precomputed vectors through a small lookup model whose ``encode_query`` /
  ``encode_document`` map the texts ``"q{i}"`` / ``"d{j}"`` to rows of the matrices. No margins,
  ``sampling_strategy="top"``, ``num_negatives=k``, ``range_max`` equal to the kernel's first
  window, ``output_format="n-tuple"``, its default ``faiss_batch_size`` (16384 queries a chunk).
  Its total time and its search time (first similarity chunk to the end of its top-k) are
  reported; the rest is its dataset building.
* ``floor``: one blocked matrix product of the same shape and block sizes with a running
  top-(k+1) merge, nothing else: the least any exact miner has to do.

Each (size, method) runs in its own subprocess so its peak RSS belongs to that method alone: the
high-water mark is reset once the inputs exist, and the RSS at that point is subtracted to report
memory above baseline.
On CUDA the peak allocated GPU memory is reported too. The smallest case is also checked against
a float64 brute force of the dual-condition definition.

Example:
    HF_HUB_OFFLINE=1 python benchmarks/mining_speed.py --quick
    HF_HUB_OFFLINE=1 python benchmarks/mining_speed.py --n-q 10000 --n-d 100000 --dim 256 --k 1 10
    HF_HUB_OFFLINE=1 python benchmarks/mining_speed.py --quick --profile   # where the kernel spends time
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import inspect
import json
import logging
import math
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks._machine import load_average
from benchmarks._machine import machine_info as base_machine_info

logger = logging.getLogger(__name__)

METHODS = ("floor", "ours", "st")
DEFAULT_OUTPUT_DIR = REPO_ROOT / "benchmarks" / "results"
KERNEL_PATH = REPO_ROOT / "hn_trainer" / "mining" / "kernel.py"

# Targets of the performance issue.
CPU_MAX_OURS_OVER_FLOOR = 1.3
CPU_MIN_ST_OVER_OURS = 2.5
CPU_MEMORY_CASE = (10_000, 100_000)  # (n_q, n_d) where ours must stay under 1 GB
CPU_MAX_EXTRA_RSS_MB = 1024.0
GPU_TARGET_CASE = (100_000, 1_000_000, 256)
GPU_MAX_SECONDS = 2.0


@dataclass
class Case:
    """One benchmark cell: a problem size, a method and how to run it."""

    n_q: int
    n_d: int
    dim: int
    k: int
    method: str
    device: str = "cpu"
    repeats: int = 1
    seed: int = 0
    query_block_size: int | None = None  # None: the kernel's default for the device
    corpus_block_size: int | None = None
    precision: str = "fp32"
    st_batch_size: int = 16384
    st_range_max: int = 32
    threads: int | None = None
    warmup: bool = True

    @property
    def cells(self) -> int:
        return self.n_q * self.n_d


# ----------------------------------------------------------------------------------------------
# Inputs and memory
# ----------------------------------------------------------------------------------------------


def make_inputs(n_q: int, n_d: int, dim: int, seed: int):
    """Seeded unit-norm query and corpus matrices (float32, CPU) and one random positive per query."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    queries = torch.randn(n_q, dim, generator=generator)
    queries.div_(queries.norm(dim=1, keepdim=True))
    corpus = torch.randn(n_d, dim, generator=generator)
    corpus.div_(corpus.norm(dim=1, keepdim=True))
    positives = torch.randint(n_d, (n_q,), generator=generator)
    return queries, corpus, positives


def process_peak_rss_mb() -> float:
    """``ru_maxrss`` of this process (its whole life, imports included), in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _proc_status_mb(field_name: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (Linux ``clear_refs``), so later peaks exclude the
    transient memory of imports and input creation. Returns whether it worked."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _proc_status_mb("VmHWM") is not None


def current_rss_mb() -> float:
    """Resident set size now, in MiB (falls back to the process peak off Linux)."""
    value = _proc_status_mb("VmRSS")
    return process_peak_rss_mb() if value is None else value


def peak_rss_mb(reset_worked: bool) -> float:
    """Peak RSS since the last reset (``VmHWM``), or of the whole process when resetting failed."""
    value = _proc_status_mb("VmHWM") if reset_worked else None
    return process_peak_rss_mb() if value is None else value


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------------------------
# Methods
# ----------------------------------------------------------------------------------------------


def floor_topk(queries, corpus, k: int, query_block_size: int | None, corpus_block_size: int | None, dtype):
    """Blocked ``queries @ corpus.T`` with a running ``torch.topk`` of k+1 per query: the speed floor.

    Block sizes default to the kernel's for the device. Returns ``(scores, indices)`` of shape
    ``[n_q, k + 1]`` in no particular order.
    """
    import torch

    from hn_trainer.mining.kernel import _block_sizes

    query_block_size, corpus_block_size = _block_sizes(queries.device, query_block_size, corpus_block_size)

    width = k + 1
    n_q, n_d = queries.shape[0], corpus.shape[0]
    screen_q, screen_c = queries.to(dtype), corpus.to(dtype)
    out_scores = torch.empty((n_q, min(width, n_d)), dtype=dtype, device=queries.device)
    out_indices = torch.empty((n_q, min(width, n_d)), dtype=torch.long, device=queries.device)
    with torch.no_grad():
        for q0 in range(0, n_q, query_block_size):
            block = screen_q[q0 : q0 + query_block_size]
            best_scores = best_indices = None
            for c0 in range(0, n_d, corpus_block_size):
                scores = block @ screen_c[c0 : c0 + corpus_block_size].T
                top_scores, top_indices = scores.topk(min(width, scores.shape[1]), dim=1, sorted=False)
                top_indices += c0
                if best_scores is None:
                    best_scores, best_indices = top_scores, top_indices
                else:
                    merged = torch.cat([best_scores, top_scores], dim=1)
                    best_scores, pos = merged.topk(min(width, merged.shape[1]), dim=1, sorted=False)
                    best_indices = torch.cat([best_indices, top_indices], dim=1).gather(1, pos)
            out_scores[q0 : q0 + block.shape[0]] = best_scores
            out_indices[q0 : q0 + block.shape[0]] = best_indices
    return out_scores, out_indices


class LookupModel:
    """Just enough of a ``SentenceTransformer`` for ``mine_hard_negatives``: vectors looked up by text.

    ``encode_query`` / ``encode_document`` parse ``"q{i}"`` / ``"d{j}"`` and return those rows;
    ``similarity`` and ``similarity_pairwise`` are sentence-transformers' cosine functions, which
    is what a real model with the default similarity uses.
    """

    def __init__(self, queries, corpus, device: str) -> None:
        import torch
        from sentence_transformers.util import SimilarityFunction

        self.device = torch.device(device)
        # On CUDA, hand out device tensors so that its torch search runs on the GPU (with numpy,
        # as a real encode returns, the search would run on the CPU).
        self._queries = queries if device.startswith("cuda") else queries.numpy()
        self._corpus = corpus if device.startswith("cuda") else corpus.numpy()
        self.similarity = SimilarityFunction.to_similarity_fn("cosine")
        self.similarity_pairwise = SimilarityFunction.to_similarity_pairwise_fn("cosine")
        self.encode_seconds = 0.0

    def get_embedding_dimension(self) -> int:
        return self._corpus.shape[1]

    def _lookup(self, matrix, texts: list[str]):
        import numpy as np
        import torch

        start = time.perf_counter()
        rows = np.fromiter((int(text[1:]) for text in texts), dtype=np.int64, count=len(texts))
        if len(rows) == matrix.shape[0] and (rows == np.arange(len(rows))).all():
            out = matrix
        elif isinstance(matrix, np.ndarray):
            out = matrix[rows]
        else:
            out = matrix.index_select(0, torch.from_numpy(rows).to(matrix.device))
        self.encode_seconds += time.perf_counter() - start
        return out

    def encode_query(self, texts: list[str], **kwargs: Any):
        return self._lookup(self._queries, texts)

    def encode_document(self, texts: list[str], **kwargs: Any):
        return self._lookup(self._corpus, texts)


class SearchTimer:
    """Times the search loop of ``mine_hard_negatives`` (similarity chunks and their top-k).

    Its torch path iterates ``trange(..., desc="Computing similarity scores")``; the module's
    ``trange`` is wrapped so the clock starts at the first chunk and stops when the loop ends.
    """

    def __init__(self, device: str) -> None:
        self.device = device
        self.start: float | None = None
        self.end: float | None = None

    def __enter__(self) -> SearchTimer:
        from sentence_transformers.util import hard_negatives

        self._module, self._trange = hard_negatives, hard_negatives.trange
        original = self._trange

        def timed_trange(*args: Any, **kwargs: Any):
            iterator = original(*args, **kwargs)
            if kwargs.get("desc") != "Computing similarity scores":
                return iterator
            return self._timed(iterator)

        hard_negatives.trange = timed_trange
        return self

    def _timed(self, iterator):
        self.start = time.perf_counter()
        yield from iterator
        _sync(self.device)
        self.end = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self._module.trange = self._trange

    @property
    def seconds(self) -> float | None:
        return None if self.start is None or self.end is None else self.end - self.start


def _kernel_kwargs(case: Case) -> dict[str, Any]:
    from hn_trainer.mining.kernel import dual_condition_mine

    kwargs: dict[str, Any] = {
        "conditions": "both",
        "query_block_size": case.query_block_size,
        "corpus_block_size": case.corpus_block_size,
        "device": case.device,
    }
    if "precision" in inspect.signature(dual_condition_mine).parameters:
        kwargs["precision"] = case.precision
    return kwargs


def _window_counter():
    """Count the kernel's window widenings through its debug log."""

    class Counter(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.DEBUG)
            self.widenings = 0

        def emit(self, record: logging.LogRecord) -> None:
            if "widening" in record.getMessage():
                self.widenings += 1

    counter = Counter()
    kernel_logger = logging.getLogger("hn_trainer.mining.kernel")
    kernel_logger.setLevel(logging.DEBUG)
    kernel_logger.addHandler(counter)
    return counter


def run_single_case(case: Case) -> dict[str, Any]:
    """Run one method on one size in this process; returns timings and memory."""
    import torch

    if case.method == "st":
        from datasets import Dataset
        from sentence_transformers.util import mine_hard_negatives
    elif case.method in ("ours", "check"):
        from hn_trainer.mining.kernel import dual_condition_mine
    kernel_hash = _kernel_hash() if case.method in ("ours", "check") else None
    from hn_trainer.mining.kernel import _block_sizes

    sizes = _block_sizes(torch.device(case.device), case.query_block_size, case.corpus_block_size)
    case = dataclasses.replace(case, query_block_size=sizes[0], corpus_block_size=sizes[1])
    if case.threads:
        torch.set_num_threads(case.threads)

    queries, corpus, positive = make_inputs(case.n_q, case.n_d, case.dim, case.seed)
    if case.device != "cpu":
        queries, corpus = queries.to(case.device), corpus.to(case.device)

    def inputs(n_q: int, n_d: int) -> dict[str, Any]:
        """Arguments for the first ``n_q`` queries against the first ``n_d`` documents."""
        pos = positive[:n_q] % n_d
        out: dict[str, Any] = {
            "queries": queries[:n_q],
            "corpus": corpus[:n_d],
            "pairs": torch.stack([torch.arange(n_q), pos], dim=1),
            "positives": [[p] for p in pos.tolist()],
        }
        if case.method == "st":
            out["dataset"] = Dataset.from_dict(
                {"query": [f"q{i}" for i in range(n_q)], "positive": [f"d{p}" for p in pos.tolist()]}
            )
            out["corpus_texts"] = [f"d{j}" for j in range(n_d)]
        return out

    full = inputs(case.n_q, case.n_d)
    # Baseline: RSS with the inputs built. The high-water mark is reset so that the peak is the
    # method's own (otherwise import-time transients, about 0.5 GB with torch, would hide it).
    reset_worked = reset_peak_rss()
    baseline = current_rss_mb() if reset_worked else process_peak_rss_mb()

    screen_dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[case.precision]
    extra: dict[str, Any] = {}
    counter = _window_counter() if case.method in ("ours", "check") else None

    def run_once(args: dict[str, Any]):
        if case.method == "floor":
            return floor_topk(
                args["queries"],
                args["corpus"],
                case.k,
                case.query_block_size,
                case.corpus_block_size,
                screen_dtype,
            )
        if case.method in ("ours", "check"):
            return dual_condition_mine(
                args["queries"],
                args["corpus"],
                args["pairs"],
                args["positives"],
                k=case.k,
                **_kernel_kwargs(case),
            )
        model = LookupModel(args["queries"], args["corpus"], case.device)
        with SearchTimer(case.device) as timer:
            start = time.perf_counter()
            out = mine_hard_negatives(
                args["dataset"],
                model,
                corpus=args["corpus_texts"],
                num_negatives=case.k,
                range_max=case.st_range_max,
                sampling_strategy="top",
                output_format="n-tuple",
                faiss_batch_size=case.st_batch_size,
                use_faiss=False,
                verbose=False,
            )
            total = time.perf_counter() - start
        search = timer.seconds
        extra.update(
            st_search_s=search,
            st_encode_s=model.encode_seconds,
            st_rest_s=None if search is None else total - search - model.encode_seconds,
        )
        return out

    if case.warmup:  # small call: library initialisation, not counted
        run_once(inputs(min(case.n_q, 256), min(case.n_d, 4096)))
        _sync(case.device)
    if case.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        gpu_baseline_mb = torch.cuda.memory_allocated() / 2**20
    if counter is not None:
        counter.widenings = 0

    times, cpu_times, st_parts = [], [], []
    result = None
    for _ in range(case.repeats):
        _sync(case.device)
        cpu_start, start = time.process_time(), time.perf_counter()
        result = run_once(full)
        _sync(case.device)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
        if case.method == "st":
            st_parts.append(dict(extra))

    row: dict[str, Any] = {
        **dataclasses.asdict(case),
        "seconds": min(times),
        "all_seconds": times,
        "cpu_seconds": min(cpu_times),
        "all_cpu_seconds": cpu_times,
        "peak_rss_mb": peak_rss_mb(reset_worked),
        "baseline_rss_mb": baseline,
        "process_peak_rss_mb": process_peak_rss_mb(),
        "rss_peak_source": "VmHWM after reset" if reset_worked else "ru_maxrss",
        "torch_threads": torch.get_num_threads(),
        "kernel_sha256": kernel_hash,
    }
    row["extra_rss_mb"] = row["peak_rss_mb"] - baseline
    if case.device.startswith("cuda"):
        row["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        row["gpu_baseline_mb"] = gpu_baseline_mb
        row["gpu_name"] = torch.cuda.get_device_name()
    if case.method == "st":
        best = min(range(len(times)), key=times.__getitem__)
        row.update(st_parts[best])
        row["st_rows"] = len(result)
    if case.method in ("ours", "check"):
        row["found_fraction"] = float((result.num_found() == case.k).float().mean())
        row["widenings"] = counter.widenings // max(1, case.repeats)
    if case.method == "check":
        row.update(brute_force_check(queries.cpu(), corpus.cpu(), positive, case.k, result))
    return row


def _kernel_hash() -> str | None:
    """Short sha256 of the kernel source this process imported (runs must all see the same file)."""
    module = sys.modules.get("hn_trainer.mining.kernel")
    path = Path(module.__file__) if module is not None else KERNEL_PATH
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.exists() else None


def brute_force_check(queries, corpus, positive, k: int, result) -> dict[str, Any]:
    """Compare the kernel with the dual-condition definition evaluated on a float64 distance matrix.

    Decision vectors are normalised in float32 (as the kernel does), distances are float64 matmul
    products; the k qualifying documents with the smallest ``d(Q, D)``, ties by lower index.
    """
    import torch
    import torch.nn.functional as F

    q64 = F.normalize(queries, dim=1).double()
    c64 = F.normalize(corpus, dim=1).double()
    n_q = q64.shape[0]
    indices = torch.full((n_q, k), -1, dtype=torch.long)
    distances = torch.full((n_q, k), math.inf, dtype=torch.float64)
    for q0 in range(0, n_q, 512):
        q1 = min(q0 + 512, n_q)
        rows = torch.arange(q0, q1)
        d_qd = 1.0 - q64[q0:q1] @ c64.T
        d_pd = 1.0 - c64[positive[q0:q1]] @ c64.T
        d_qp = d_qd[rows - q0, positive[q0:q1]]
        keep = (d_qd < d_qp[:, None]) & (d_qd < d_pd)
        keep[rows - q0, positive[q0:q1]] = False
        masked = torch.where(keep, d_qd, math.inf)
        order = masked.argsort(dim=1, stable=True)[:, :k]
        picked = masked.gather(1, order)
        indices[q0:q1] = torch.where(torch.isinf(picked), -1, order)
        distances[q0:q1] = picked
    same = (result.indices == indices).all(dim=1)
    close = torch.isclose(result.distances.double(), distances, rtol=0, atol=1e-6) | (
        torch.isinf(distances) & torch.isinf(result.distances.double())
    )
    return {
        "check_pairs": n_q,
        "check_index_mismatches": int((~same).sum()),
        "check_distance_mismatches": int((~close.all(dim=1)).sum()),
        "check_passed": bool(same.all() and close.all()),
    }


# ----------------------------------------------------------------------------------------------
# Orchestration
# ----------------------------------------------------------------------------------------------


@dataclass
class Settings:
    """What to run: sizes, methods, devices and how."""

    sizes: list[tuple[int, int, int]]  # (n_q, n_d, dim)
    ks: list[int]
    extra_k: list[tuple[int, int, int, int]] = field(default_factory=list)  # (n_q, n_d, dim, k)
    devices: list[str] = field(default_factory=lambda: ["cpu"])
    methods: tuple[str, ...] = METHODS
    repeats: int | None = None
    small_cells: int = 200_000_000
    query_block_size: int | None = None
    corpus_block_size: int | None = None
    precision: str = "auto"
    st_batch_size: int = 16384
    st_range_max: int | None = None
    st_max_cells: int = 2_000_000_000
    check: bool = True
    seed: int = 0
    threads: int | None = None
    timeout: float | None = None


def _kernel_window(k: int) -> int:
    """The kernel's first-pass window (candidates per query), used as ST's ``range_max``."""
    try:
        from hn_trainer.mining.kernel import default_window
    except ImportError:
        return max(4 * k, 32)
    return default_window(k)


def build_cases(settings: Settings) -> list[Case]:
    """Every (device, size, k, method) cell, plus the brute-force check on the smallest size."""
    cases: list[Case] = []
    combos = [(n_q, n_d, dim, k) for (n_q, n_d, dim) in settings.sizes for k in settings.ks]
    combos += [c for c in settings.extra_k if c not in combos]
    for device in settings.devices:
        precision = settings.precision
        if precision == "auto":
            precision = "fp16" if device.startswith("cuda") else "fp32"
        device_combos = list(combos)
        if device.startswith("cuda") and settings.sizes and GPU_TARGET_CASE + (1,) not in device_combos:
            device_combos.append(GPU_TARGET_CASE + (1,))
        for n_q, n_d, dim, k in device_combos:
            repeats = settings.repeats or (3 if n_q * n_d <= settings.small_cells else 1)
            for method in settings.methods:
                if method == "st" and n_q * n_d > settings.st_max_cells:
                    continue
                cases.append(
                    Case(
                        n_q=n_q,
                        n_d=n_d,
                        dim=dim,
                        k=k,
                        method=method,
                        device=device,
                        repeats=repeats,
                        seed=settings.seed,
                        query_block_size=settings.query_block_size,
                        corpus_block_size=settings.corpus_block_size,
                        precision=precision,
                        st_batch_size=settings.st_batch_size,
                        st_range_max=settings.st_range_max or _kernel_window(k),
                        threads=settings.threads,
                    )
                )
        if settings.check and device_combos:
            n_q, n_d, dim, k = min(device_combos, key=lambda c: (c[0] * c[1], c[2], c[3]))
            cases.append(
                Case(
                    n_q=n_q,
                    n_d=n_d,
                    dim=dim,
                    k=max(settings.ks),
                    method="check",
                    device=device,
                    seed=settings.seed,
                    query_block_size=settings.query_block_size,
                    corpus_block_size=settings.corpus_block_size,
                    precision=precision,
                    threads=settings.threads,
                    warmup=False,
                )
            )
    return cases


def run_in_subprocess(case: Case, timeout: float | None, log_dir: Path) -> dict[str, Any]:
    """Run one case in a fresh interpreter so its peak RSS is its own."""
    out = log_dir / f"{case.device}-{case.method}-{case.n_q}x{case.n_d}x{case.dim}-k{case.k}.json"
    cmd = [sys.executable, str(Path(__file__).resolve())]
    cmd += ["--single-case", json.dumps(dataclasses.asdict(case)), "--single-case-out", str(out)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**dataclasses.asdict(case), "error": f"timed out after {timeout} s"}
    wall = time.perf_counter() - start
    if proc.returncode != 0 or not out.exists():
        tail = (proc.stderr or proc.stdout)[-2000:]
        return {**dataclasses.asdict(case), "error": f"exit {proc.returncode}: {tail}"}
    row = json.loads(out.read_text())
    row["process_wall_s"] = wall
    return row


def machine_info() -> dict[str, Any]:
    """The machine (see ``benchmarks._machine``), library versions, kernel file fingerprint, load."""
    import numpy
    import sentence_transformers
    import torch

    info = {
        **base_machine_info(),
        "load_average": load_average(),
        "torch": torch.__version__,
        "sentence_transformers": sentence_transformers.__version__,
        "numpy": numpy.__version__,
    }
    if KERNEL_PATH.exists():
        info["kernel_sha256"] = _kernel_hash()
        info["kernel_mtime"] = dt.datetime.fromtimestamp(
            KERNEL_PATH.stat().st_mtime, dt.timezone.utc
        ).isoformat(timespec="seconds")
    return info


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def _size(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000}k"
    return str(n)


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One summary per (device, size, k): times, ratios and memory of the three methods."""
    groups: dict[tuple, dict[str, dict[str, Any]]] = {}
    for row in rows:
        if row["method"] == "check":
            continue
        key = (row["device"], row["n_q"], row["n_d"], row["dim"], row["k"])
        groups.setdefault(key, {})[row["method"]] = row
    summaries = []
    for (device, n_q, n_d, dim, k), by_method in groups.items():
        def get(method: str, name: str):
            row = by_method.get(method)
            return None if row is None or "error" in row else row.get(name)

        ours, floor, st = get("ours", "seconds"), get("floor", "seconds"), get("st", "seconds")
        summaries.append(
            {
                "device": device,
                "gpu_name": get("ours", "gpu_name"),
                "n_q": n_q,
                "n_d": n_d,
                "dim": dim,
                "k": k,
                "repeats": next(iter(by_method.values())).get("repeats"),
                "floor_s": floor,
                "ours_s": ours,
                "st_s": st,
                "st_search_s": get("st", "st_search_s"),
                "ours_over_floor": ours / floor if ours and floor else None,
                "ours_over_floor_cpu_time": get("ours", "cpu_seconds") / get("floor", "cpu_seconds")
                if get("ours", "cpu_seconds") and get("floor", "cpu_seconds")
                else None,
                "st_over_ours": st / ours if st and ours else None,
                "st_search_over_ours": get("st", "st_search_s") / ours
                if get("st", "st_search_s") and ours
                else None,
                "peak_rss_mb": {m: get(m, "peak_rss_mb") for m in METHODS},
                "extra_rss_mb": {m: get(m, "extra_rss_mb") for m in METHODS},
                "gpu_peak_mb": {m: get(m, "gpu_peak_mb") for m in METHODS},
                "found_fraction": get("ours", "found_fraction"),
                "widenings": get("ours", "widenings"),
                "errors": {m: r["error"][:300] for m, r in by_method.items() if "error" in r},
            }
        )
    return summaries


def evaluate_targets(summaries: list[dict[str, Any]], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """PASS/FAIL (or NOT RUN) for each target of the issue."""
    targets = []
    cpu = [s for s in summaries if s["device"] == "cpu"]
    ratios = [s for s in cpu if s["ours_over_floor"] is not None]
    worst = max(ratios, key=lambda s: s["ours_over_floor"], default=None)
    targets.append(
        {
            "target": f"CPU: ours <= {CPU_MAX_OURS_OVER_FLOOR}x floor (both conditions), every size",
            "status": "NOT RUN" if worst is None else
            ("PASS" if worst["ours_over_floor"] <= CPU_MAX_OURS_OVER_FLOOR else "FAIL"),
            "detail": "" if worst is None else
            f"worst {worst['ours_over_floor']:.2f}x at {_size(worst['n_q'])} x {_size(worst['n_d'])} "
            f"x {worst['dim']} k={worst['k']}; all: "
            + ", ".join(f"{s['ours_over_floor']:.2f}" for s in ratios),
        }
    )
    st_ratios = [s for s in cpu if s["st_over_ours"] is not None]
    slowest = min(st_ratios, key=lambda s: s["st_over_ours"], default=None)
    targets.append(
        {
            "target": f"CPU: ST total >= {CPU_MIN_ST_OVER_OURS}x ours, every size",
            "status": "NOT RUN" if slowest is None else
            ("PASS" if slowest["st_over_ours"] >= CPU_MIN_ST_OVER_OURS else "FAIL"),
            "detail": "" if slowest is None else
            f"lowest {slowest['st_over_ours']:.2f}x at {_size(slowest['n_q'])} x {_size(slowest['n_d'])} "
            f"x {slowest['dim']} k={slowest['k']}; all: "
            + ", ".join(f"{s['st_over_ours']:.2f}" for s in st_ratios),
        }
    )
    mem = [
        s for s in cpu
        if (s["n_q"], s["n_d"]) == CPU_MEMORY_CASE and s["k"] == 1 and s["extra_rss_mb"]["ours"] is not None
    ]
    if mem:
        m = min(mem, key=lambda s: s["dim"])
        extra, raw = m["extra_rss_mb"]["ours"], m["peak_rss_mb"]["ours"]
        targets.append(
            {
                "target": "CPU: ours peak memory < 1 GB at 10k x 100k (above baseline)",
                "status": "PASS" if extra < CPU_MAX_EXTRA_RSS_MB else "FAIL",
                "detail": f"{extra:.0f} MB above baseline, {raw:.0f} MB raw peak (d={m['dim']}); "
                f"a dense score matrix would be {10_000 * 100_000 * 4 / 2**20:.0f} MB",
            }
        )
        smaller = [
            s for s in cpu
            if s["n_d"] == m["n_d"] and s["dim"] == m["dim"] and s["k"] == 1 and s["n_q"] < m["n_q"]
            and s["extra_rss_mb"]["ours"] is not None
        ]
        if smaller:
            small = min(smaller, key=lambda s: s["n_q"])
            growth = extra / max(small["extra_rss_mb"]["ours"], 1.0)
            targets.append(
                {
                    "target": "CPU: ours memory bounded by the blocks, not by n_q x n_d",
                    "status": "PASS" if growth < 2.0 else "FAIL",
                    "detail": f"{small['extra_rss_mb']['ours']:.0f} MB at {_size(small['n_q'])} queries -> "
                    f"{extra:.0f} MB at {_size(m['n_q'])} ({growth:.2f}x for {m['n_q'] / small['n_q']:.0f}x "
                    "the queries)",
                }
            )
    else:
        targets.append(
            {"target": "CPU: ours peak memory < 1 GB at 10k x 100k", "status": "NOT RUN", "detail": ""}
        )
    gpu = [
        s for s in summaries
        if s["device"].startswith("cuda")
        and (s["n_q"], s["n_d"], s["dim"]) == GPU_TARGET_CASE
        and s["k"] == 1
    ]
    if gpu and gpu[0]["ours_s"] is not None:
        s = gpu[0]
        on_h100 = "H100" in (s["gpu_name"] or "")
        status = ("PASS" if s["ours_s"] <= GPU_MAX_SECONDS else "FAIL") if on_h100 else "N/A (not an H100)"
        targets.append(
            {
                "target": f"GPU: 100k x 1M x 256 in <= {GPU_MAX_SECONDS} s on an H100",
                "status": status,
                "detail": f"{s['ours_s']:.2f} s on {s['gpu_name']} (floor {_fmt(s['floor_s'])} s)",
            }
        )
    else:
        targets.append(
            {"target": f"GPU: 100k x 1M x 256 in <= {GPU_MAX_SECONDS} s on an H100", "status": "NOT RUN",
             "detail": "no CUDA device on this machine"}
        )
    for row in rows:
        if row["method"] != "check":
            continue
        passed = row.get("check_passed")
        targets.append(
            {
                "target": f"Exact: ours == brute force ({row['device']}, {_size(row['n_q'])} x "
                f"{_size(row['n_d'])} x {row['dim']}, k={row['k']})",
                "status": "ERROR" if "error" in row else ("PASS" if passed else "FAIL"),
                "detail": row.get("error", "")[:300] if "error" in row else
                f"{row['check_index_mismatches']} index / {row['check_distance_mismatches']} distance "
                f"mismatches in {row['check_pairs']} pairs",
            }
        )
    return targets


def to_markdown(info: dict[str, Any], summaries, targets, rows, command: str) -> str:
    """The report: machine, command, time and memory tables, targets."""
    lines = [
        "# Mining speed",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {info['cpu']}, {info['cpu_count']} cores (torch threads {info['torch_threads']}), "
        f"GPU: {info['gpu'] or 'none'}; torch {info['torch']}, sentence-transformers "
        f"{info['sentence_transformers']}; {info['date']}; kernel sha256 {info.get('kernel_sha256', '-')} "
        f"(modified {info.get('kernel_mtime', '-')}); load average at start {info.get('load_average')}.",
        "",
        "Times are the best of `rep` runs in seconds; `ST` is `mine_hard_negatives` in total, "
        "`ST search` its similarity + top-k loop alone; `ours/floor (CPU time)` compares process CPU "
        "seconds, less sensitive to other load on a shared machine. Memory: peak RSS of each method's "
        "own process from the moment its inputs exist (high-water mark reset then, so import transients "
        "do not count; the whole-process `ru_maxrss` is in the JSON); `+MB` is above the RSS with the "
        "inputs built.",
        "",
        "| device | n_q | n_d | d | k | rep | floor s | ours s | ST s | ST search s | ours/floor | ST/ours "
        "| ST search/ours | ours/floor (CPU time) | found | widenings |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summaries:
        lines.append(
            f"| {s['device']} | {_size(s['n_q'])} | {_size(s['n_d'])} | {s['dim']} | {s['k']} "
            f"| {s['repeats']} "
            f"| {_fmt(s['floor_s'])} | {_fmt(s['ours_s'])} | {_fmt(s['st_s'])} | {_fmt(s['st_search_s'])} "
            f"| {_fmt(s['ours_over_floor'])} | {_fmt(s['st_over_ours'])} | {_fmt(s['st_search_over_ours'])} "
            f"| {_fmt(s['ours_over_floor_cpu_time'])} "
            f"| {_fmt(s['found_fraction'], 3)} | {s['widenings'] if s['widenings'] is not None else '-'} |"
        )
    lines += [
        "",
        "| device | n_q | n_d | d | k | floor peak MB (+MB) | ours peak MB (+MB) | ST peak MB (+MB) "
        "| GPU peak MB floor / ours / ST |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summaries:
        cells = [
            f"{_fmt(s['peak_rss_mb'][m], 0)} ({_fmt(s['extra_rss_mb'][m], 0)})" for m in METHODS
        ]
        gpu = " / ".join(_fmt(s["gpu_peak_mb"][m], 0) for m in METHODS) if s["device"] != "cpu" else "-"
        lines.append(
            f"| {s['device']} | {_size(s['n_q'])} | {_size(s['n_d'])} | {s['dim']} | {s['k']} | "
            + " | ".join(cells)
            + f" | {gpu} |"
        )
    hashes = sorted({row["kernel_sha256"] for row in rows if row.get("kernel_sha256")})
    if len(hashes) > 1:
        lines += ["", f"**Warning: the kernel file changed during the run (hashes {', '.join(hashes)}).**"]
    errors = [(s, m, e) for s in summaries for m, e in s["errors"].items()]
    if errors:
        lines += ["", "Errors:"]
        lines += [
            f"- {s['device']} {s['n_q']}x{s['n_d']}x{s['dim']} k={s['k']} {m}: {e}" for s, m, e in errors
        ]
    lines += ["", "| target | status | detail |", "|---|---|---|"]
    lines += [f"| {t['target']} | {t['status']} | {t['detail']} |" for t in targets]
    return "\n".join(lines) + "\n"


def write_outputs(output_dir: Path, info, settings: Settings, rows, command: str) -> str:
    """Atomically write the JSON (machine info, every row, summaries, targets) and the markdown."""
    from hn_trainer.io import atomic_path, write_json

    summaries = summarise(rows)
    targets = evaluate_targets(summaries, rows)
    markdown = to_markdown(info, summaries, targets, rows, command)
    write_json(
        output_dir / "mining_speed.json",
        {
            "command": command,
            "machine": info,
            "settings": dataclasses.asdict(settings),
            "rows": rows,
            "summary": summaries,
            "targets": targets,
        },
    )
    with atomic_path(output_dir / "mining_speed.md") as tmp:
        tmp.write_text(markdown, encoding="utf-8")
    return markdown


# ----------------------------------------------------------------------------------------------
# Profile
# ----------------------------------------------------------------------------------------------


def profile_kernel(case: Case, output_dir: Path) -> str:
    """cProfile (Python functions) and torch.profiler (ops) of one kernel call, written to a text file."""
    import cProfile
    import io
    import pstats

    import torch
    from torch.profiler import ProfilerActivity, profile

    from hn_trainer.io import atomic_path
    from hn_trainer.mining.kernel import dual_condition_mine

    if case.threads:
        torch.set_num_threads(case.threads)
    queries, corpus, positive = make_inputs(case.n_q, case.n_d, case.dim, case.seed)
    if case.device != "cpu":
        queries, corpus = queries.to(case.device), corpus.to(case.device)
    pairs = torch.stack([torch.arange(case.n_q), positive], dim=1)
    positives = [[p] for p in positive.tolist()]
    kwargs = _kernel_kwargs(case)
    warm = positive[:256] % 4096  # warm-up call, not profiled
    warm_pairs = torch.stack([torch.arange(len(warm)), warm], dim=1)
    warm_positives = [[p] for p in warm.tolist()]
    dual_condition_mine(queries[:256], corpus[:4096], warm_pairs, warm_positives, k=case.k, **kwargs)
    start = time.perf_counter()
    dual_condition_mine(queries, corpus, pairs, positives, k=case.k, **kwargs)
    plain = time.perf_counter() - start
    floor_start = time.perf_counter()
    floor_topk(queries, corpus, case.k, case.query_block_size, case.corpus_block_size, queries.dtype)
    floor = time.perf_counter() - floor_start

    profiler = cProfile.Profile()
    profiler.enable()
    dual_condition_mine(queries, corpus, pairs, positives, k=case.k, **kwargs)
    profiler.disable()
    stream = io.StringIO()
    pstats.Stats(profiler, stream=stream).sort_stats("cumulative").print_stats(30)
    stream.write("\n")
    pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(20)

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if case.device.startswith("cuda") else [])
    with profile(activities=activities) as prof:
        dual_condition_mine(queries, corpus, pairs, positives, k=case.k, **kwargs)
    sort = "self_cuda_time_total" if case.device.startswith("cuda") else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=25)
    text = (
        f"Profile of dual_condition_mine at {case.n_q} x {case.n_d} x {case.dim}, k={case.k}, {case.device}\n"
        f"plain call {plain:.2f} s, floor {floor:.2f} s\n\n"
        f"== cProfile ==\n{stream.getvalue()}\n== torch.profiler ({sort}) ==\n{table}\n"
    )
    with atomic_path(output_dir / "mining_speed_profile.txt") as tmp:
        tmp.write_text(text, encoding="utf-8")
    return text


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="2-core CPU preset: d=256, n_q in {2k, 10k} x n_d in {10k, 100k}, k=10 once")
    parser.add_argument("--n-q", type=int, nargs="+", help="query counts (full grid: 2k 10k 100k)")
    parser.add_argument("--n-d", type=int, nargs="+", help="corpus sizes (full grid: 10k 100k 1M)")
    parser.add_argument("--dim", type=int, nargs="+", help="dimensions (full grid: 256 768)")
    parser.add_argument("--k", type=int, nargs="+", default=[1], help="negatives per pair (default 1)")
    parser.add_argument("--k10-once", action=argparse.BooleanOptionalAction, default=True,
                        help="also run k=10 at 10k x 100k x 256 (default on)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--devices", nargs="+", default=None,
                        help="torch devices (default: cpu, plus cuda when available)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="repeats per cell (default 3 up to --small-cells query x doc cells, else 1)")
    parser.add_argument("--small-cells", type=int, default=200_000_000)
    parser.add_argument(
        "--query-block-size", type=int, default=None, help="default: the kernel's (1024 on CPU, 4096 on CUDA)"
    )
    parser.add_argument(
        "--corpus-block-size", type=int, default=None, help="default: the kernel's (16384 on CPU, 65536 on CUDA)"
    )
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                        help="screening precision for ours and the floor (auto: fp16 on CUDA, fp32 on CPU)")
    parser.add_argument("--st-batch-size", type=int, default=16384,
                        help="ST faiss_batch_size, the query chunk of its search (default: ST's own, 16384)")
    parser.add_argument("--st-range-max", type=int, default=None,
                        help="ST range_max (default: the kernel's first window, default_window(k))")
    parser.add_argument("--st-max-cells", type=int, default=2_000_000_000,
                        help="skip ST above this many query x doc cells")
    parser.add_argument("--no-check", action="store_true", help="skip the brute-force check")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run (default: torch's)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per subprocess")
    parser.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT_DIR)
    parser.add_argument("--profile", action="store_true",
                        help="instead of the benchmark, profile the kernel on the largest k=1 size")
    parser.add_argument("--single-case", help=argparse.SUPPRESS)
    parser.add_argument("--single-case-out", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def settings_from_args(args: argparse.Namespace) -> Settings:
    import torch

    if args.quick:
        sizes = [(2_000, 10_000, 256), (10_000, 10_000, 256), (2_000, 100_000, 256), (10_000, 100_000, 256)]
    else:
        n_qs = args.n_q or [2_000, 10_000, 100_000]
        n_ds = args.n_d or [10_000, 100_000, 1_000_000]
        dims = args.dim or [256, 768]
        sizes = [(n_q, n_d, dim) for dim in dims for n_d in n_ds for n_q in n_qs]
    if args.quick and (args.n_q or args.n_d or args.dim):
        raise SystemExit("--quick fixes the sizes; drop --n-q/--n-d/--dim or --quick")
    extra_k = []
    if args.k10_once and 10 not in args.k and (10_000, 100_000, 256) in sizes:
        extra_k.append((10_000, 100_000, 256, 10))
    devices = args.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    return Settings(
        sizes=sizes,
        ks=list(args.k),
        extra_k=extra_k,
        devices=devices,
        methods=tuple(args.methods),
        repeats=args.repeats,
        small_cells=args.small_cells,
        query_block_size=args.query_block_size,
        corpus_block_size=args.corpus_block_size,
        precision=args.precision,
        st_batch_size=args.st_batch_size,
        st_range_max=args.st_range_max,
        st_max_cells=args.st_max_cells,
        check=not args.no_check,
        seed=args.seed,
        threads=args.threads,
        timeout=args.timeout,
    )


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = parse_args(argv)
    if args.single_case:
        row = run_single_case(Case(**json.loads(args.single_case)))
        Path(args.single_case_out).write_text(json.dumps(row))
        return

    from tqdm.auto import tqdm

    settings = settings_from_args(args)
    given = sys.argv[1:] if argv is None else argv
    command = " ".join(["HF_HUB_OFFLINE=1 python benchmarks/mining_speed.py", shlex.join(given)]).strip()
    if args.profile:
        cases = [c for c in build_cases(settings) if c.method == "ours" and c.k == 1]
        case = max(cases, key=lambda c: (c.device != "cpu", c.cells * c.dim))
        print(profile_kernel(case, args.output_dir))
        return

    info = machine_info()
    if settings.threads:
        info["torch_threads"] = settings.threads
    cases = build_cases(settings)
    logger.info("%d runs on %s", len(cases), ", ".join(settings.devices))
    rows: list[dict[str, Any]] = []
    markdown = ""
    with tempfile.TemporaryDirectory(prefix="mining_speed_") as tmp:
        for case in tqdm(cases, desc="Benchmark", unit="run"):
            row = run_in_subprocess(case, settings.timeout, Path(tmp))
            if "error" in row:
                logger.warning(
                    "%s %dx%dx%d k=%d failed: %s", case.method, case.n_q, case.n_d, case.dim, case.k,
                    row["error"][-500:],
                )
            else:
                logger.info("%s %s %dx%dx%d k=%d: %.3f s, peak RSS %.0f MB (+%.0f)", case.device, case.method,
                            case.n_q, case.n_d, case.dim, case.k, row["seconds"], row["peak_rss_mb"],
                            row["extra_rss_mb"])
            rows.append(row)
            markdown = write_outputs(args.output_dir, info, settings, rows, command)
    print(markdown)


if __name__ == "__main__":
    main()
