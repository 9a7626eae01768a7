"""Dual-condition hard negative mining: a blockwise, exact kernel in torch.

For every (query Q, positive PD) pair a corpus document D is a hard negative when

* condition 1: ``d(Q, D) < d(Q, PD)`` (it is closer to the query than the positive is), and
* condition 2: ``d(Q, D) < d(PD, D)`` (it is closer to the query than to the positive, which
  rules out near-duplicates of the positive and likely false negatives),

both strict. The kernel returns, per pair, the ``k`` qualifying documents with the smallest
``d(Q, D)``, in increasing order, ties broken by lower corpus index.

How it works. The corpus is streamed block by block against a block of queries: one matrix
product per block gives *screening* scores, and a running top-``W`` merge keeps the ``W``
closest non-positive documents of each query (the *window*, ``W = max(2k + 8, 16)`` by
default). The conditions are then checked on the window only, read in growing prefixes
(``k + 3`` candidates first): condition 2 needs ``d(PD, D)`` only for candidates that pass
condition 1, a gather and a dot product each, so it never doubles the matrix product. A pair
is settled when its candidates provably hold the answer; otherwise the window of that pair's
query is widened (four times larger) and only those queries are streamed again.

Exactness. Every decision (both conditions, the order, the tie-break) is taken on *decision
distances*: float64 values computed from the float32 inputs (L2-normalised in float32 with
``torch.nn.functional.normalize`` for cosine) by element-wise operations with a fixed
pairwise-summation tree (numpy on CPU, torch on CUDA), so the same two vectors always give
bit-identical distances whatever the device, block or batch (a duplicate of the positive ties
with it exactly). Screening scores
only select the window; their rounding error is bounded (float32, TF32, fp16 or bf16 matmul,
see ``_screening_error``) and a pair is settled only when no document outside the window can
reach the window's answer, so the result equals a brute force that evaluates the definition on
the decision distances. Tolerances: a float64 brute force that sums in another order differs
by a few units in the last place (about 1e-16 relative), so it agrees unless two unequal
distances lie that close; it must compute each distance from its two vectors alone (numpy's
``(a * b).sum(-1)``), since a BLAS matmul can give two identical rows different last bits. A
float32 brute force carries about 1e-7 of rounding and can disagree on distances that close.
Reported distances are the decision distances rounded to float32.

Example:
    >>> import torch
    >>> corpus = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.7, 0.7]])
    >>> queries = torch.tensor([[0.8, 0.2]])
    >>> result = dual_condition_mine(queries, corpus, torch.tensor([[0, 3]]), [[3]], k=2)
    >>> result.indices.tolist()
    [[1, 0]]
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from hn_trainer.errors import ConfigError

logger = logging.getLogger(__name__)

Metric = Literal["cosine", "euclidean"]
Conditions = Literal["both", "query"]
Precision = Literal["auto", "fp32", "fp16", "bf16"]

METRICS = ("cosine", "euclidean")
CONDITIONS = ("both", "query")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")

# ``None`` block sizes pick these by device: (queries, documents) per block. The CUDA score block
# (4096 x 65536 float32, 1 GiB) is large enough that kernel launches cost little beside the work.
DEFAULT_QUERY_BLOCK_SIZE = None
DEFAULT_CORPUS_BLOCK_SIZE = None
_BLOCK_SIZES = {"cpu": (1024, 16384), "cuda": (4096, 65536)}
# Grouped top-k (see ``_block_topk``): columns per group, and the devices that use it.
_TOPK_GROUP = 128
_GROUPED_TOPK_DEVICES = ("cuda",)
WINDOW_GROWTH = 4
_SAFETY = 2.0
# Elements of float64 scratch per chunk of the exact re-check (2 MiB: stays in cache).
_EXACT_CHUNK_ELEMENTS = 1 << 18


@dataclass
class MiningResult:
    """Negatives mined for each (query, positive) pair, on CPU.

    Attributes:
        indices: ``LongTensor[n_pairs, k]`` corpus rows, closest first, ``-1`` where fewer than
            ``k`` documents qualified.
        distances: ``FloatTensor[n_pairs, k]`` matching distances (float32 rounding of the
            decision distance), ``inf`` where padded. Samplers without embeddings report
            ``-score`` or ``nan`` (see ``hn_trainer.mining.samplers``).
    """

    indices: torch.Tensor
    distances: torch.Tensor

    def __post_init__(self) -> None:
        if self.indices.shape != self.distances.shape or self.indices.dim() != 2:
            raise ValueError(
                f"indices {tuple(self.indices.shape)} and distances {tuple(self.distances.shape)} "
                "must both be [n_pairs, k]"
            )

    @property
    def k(self) -> int:
        """Number of negatives asked for per pair."""
        return self.indices.shape[1]

    def num_found(self) -> torch.Tensor:
        """``LongTensor[n_pairs]``: how many negatives each pair actually received."""
        return (self.indices >= 0).sum(dim=1)


@dataclass(frozen=True)
class CandidateRule:
    """Which candidates of a (query, positive) pair qualify, beyond not being a positive.

    Attributes:
        closer_than_positive: condition 1, ``d(Q, D) < d(Q, PD)``.
        closer_to_query_than_positive: condition 2, ``d(Q, D) < d(PD, D)``.
        max_similarity_ratio: positive-aware filtering (NV-Retriever TopK-PercPos, cosine only):
            keep ``sim(Q, D) < ratio * sim(Q, PD)`` with ``sim = 1 - d``.

    With every field at its default the rule keeps the plain top-k non-positives.
    """

    closer_than_positive: bool = False
    closer_to_query_than_positive: bool = False
    max_similarity_ratio: float | None = None

    @classmethod
    def from_conditions(cls, conditions: str) -> CandidateRule:
        """The rule of ``dual_condition_mine(conditions=...)``: ``"both"`` or ``"query"``."""
        if conditions not in CONDITIONS:
            raise ConfigError(f"conditions must be one of {CONDITIONS}, got {conditions!r}")
        return cls(closer_than_positive=True, closer_to_query_than_positive=conditions == "both")


# ----------------------------------------------------------------------------------------------
# Input preparation
# ----------------------------------------------------------------------------------------------


def _resolve_device(device: str | torch.device | None, *tensors: object) -> torch.device:
    if device is not None:
        return torch.device(device)
    for tensor in tensors:
        if isinstance(tensor, torch.Tensor) and tensor.device.type != "cpu":
            return tensor.device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _as_matrix(
    embeddings: torch.Tensor | np.ndarray, name: str, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 contiguous matrix on ``device`` and its float32 row norms ``[n, 1]``."""
    tensor = embeddings if isinstance(embeddings, torch.Tensor) else torch.from_numpy(np.asarray(embeddings))
    if tensor.dim() != 2:
        raise ValueError(f"{name} must be a 2-D matrix, got shape {tuple(tensor.shape)}")
    integer = (torch.int8, torch.int16, torch.int32, torch.int64)
    if not (tensor.is_floating_point() or tensor.dtype in integer):
        raise ValueError(f"{name} must hold numbers, got dtype {tensor.dtype}")
    tensor = tensor.detach().to(device=device, dtype=torch.float32).contiguous()
    # a row norm is finite iff the row is finite and small enough for float32 products
    norms = torch.linalg.vector_norm(tensor, dim=1, keepdim=True)
    if tensor.numel() and not bool(torch.isfinite(norms).all()):
        raise ValueError(f"{name} contains NaN, infinite or float32-overflowing values")
    return tensor, norms


def _as_pairs(pairs: torch.Tensor | np.ndarray | Sequence, n_queries: int, n_docs: int) -> torch.Tensor:
    tensor = pairs if isinstance(pairs, torch.Tensor) else torch.as_tensor(np.asarray(pairs, dtype=np.int64))
    tensor = tensor.detach().to("cpu", torch.long)
    if tensor.numel() == 0:
        return tensor.reshape(0, 2)
    if tensor.dim() != 2 or tensor.shape[1] != 2:
        raise ValueError(
            f"pairs must be [n_pairs, 2] (query row, positive corpus row), got {tuple(tensor.shape)}"
        )
    if int(tensor[:, 0].min()) < 0 or int(tensor[:, 0].max()) >= n_queries:
        raise ValueError(f"pairs hold a query row outside [0, {n_queries})")
    if int(tensor[:, 1].min()) < 0 or int(tensor[:, 1].max()) >= n_docs:
        raise ValueError(f"pairs hold a positive corpus row outside [0, {n_docs})")
    return tensor.contiguous()


@dataclass
class _Exclusions:
    """Corpus rows excluded per query row, in CSR form (``cols[offsets[q]:offsets[q + 1]]``)."""

    offsets: np.ndarray  # int64 [n_q + 1]
    cols: np.ndarray  # int64 [nnz], sorted and unique within a query

    @classmethod
    def build(
        cls,
        lists: Sequence[Sequence[int]] | None,
        n_queries: int,
        n_docs: int,
        pairs: torch.Tensor | None = None,
        name: str = "positives",
    ) -> _Exclusions:
        """From one list per query row, plus the positive of every pair when ``pairs`` is given."""
        if lists is None:
            lists = [[]] * n_queries
        if len(lists) != n_queries:
            raise ValueError(f"{name} must have one list per query row ({n_queries}), got {len(lists)}")
        lengths = np.fromiter((len(row) for row in lists), dtype=np.int64, count=n_queries)
        flat = np.fromiter(itertools.chain.from_iterable(lists), dtype=np.int64, count=int(lengths.sum()))
        if flat.size and (flat.min() < 0 or flat.max() >= n_docs):
            raise ValueError(f"{name} hold a corpus row outside [0, {n_docs})")
        owners = np.repeat(np.arange(n_queries, dtype=np.int64), lengths)
        if pairs is not None and pairs.numel():
            owners = np.concatenate([owners, pairs[:, 0].numpy()])
            flat = np.concatenate([flat, pairs[:, 1].numpy()])
        keys = np.unique(owners * max(n_docs, 1) + flat)
        owners, cols = np.divmod(keys, max(n_docs, 1))
        offsets = np.zeros(n_queries + 1, dtype=np.int64)
        np.cumsum(np.bincount(owners, minlength=n_queries), out=offsets[1:])
        return cls(offsets, cols)

    def for_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(positions in rows, corpus rows)`` of every exclusion of query rows ``rows``."""
        starts = self.offsets[rows]
        counts = self.offsets[rows + 1] - starts
        positions = np.repeat(np.arange(len(rows)), counts)
        first = np.cumsum(counts) - counts
        flat = starts[positions] + np.arange(len(positions)) - first[positions]
        return positions, self.cols[flat]


def _fp32_matmul_unit_roundoff(device: torch.device) -> float:
    """Input rounding of a float32 matmul under the global precision settings (TF32, bf16)."""
    unit = 2.0**-24
    setting = torch.get_float32_matmul_precision()
    if setting == "high":
        unit = 2.0**-11
    elif setting == "medium":
        unit = 2.0**-8
    if device.type == "cuda":
        matmul = torch.backends.cuda.matmul
        if matmul.allow_tf32 or getattr(matmul, "fp32_precision", "none") == "tf32":
            unit = max(unit, 2.0**-11)
    else:
        mkldnn_precision = getattr(getattr(torch.backends.mkldnn, "matmul", None), "fp32_precision", "none")
        if mkldnn_precision == "tf32":
            unit = max(unit, 2.0**-11)
        elif mkldnn_precision == "bf16":
            unit = max(unit, 2.0**-8)
    return unit


def _supports_out_dtype(dtype: torch.dtype, device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    try:
        probe = torch.ones(2, 2, dtype=dtype, device=device)
        return torch.mm(probe, probe, out_dtype=torch.float32).dtype == torch.float32
    except (RuntimeError, TypeError):
        return False


@dataclass
class _Space:
    """Inputs placed on the device once: decision vectors, screening copies and error bounds."""

    metric: str
    queries: torch.Tensor  # float32 decision vectors (normalised for cosine)
    corpus: torch.Tensor
    screen_queries: torch.Tensor  # screening copies (float32, float16 or bfloat16)
    screen_corpus: torch.Tensor
    half_sq_norms: torch.Tensor | None  # float32 |d|^2 / 2 (euclidean screening)
    query_norms: torch.Tensor  # float64 |q| of the decision vectors
    query_sq_norms: torch.Tensor  # float64 |q|^2 (euclidean bound)
    max_doc_norm: float
    out_dtype: bool
    relative_error: float  # screening error per unit of |q| |d|
    absolute_error: float  # screening error per unit of (|q| + |d|) (fp16 subnormals)

    @property
    def device(self) -> torch.device:
        return self.queries.device

    @property
    def n_docs(self) -> int:
        return self.corpus.shape[0]

    def screening_error(self, rows: torch.Tensor) -> torch.Tensor:
        """Float64 bound on |screening score - decision score| for queries ``rows``."""
        q_norm = self.query_norms[rows]
        big = self.max_doc_norm
        dim = self.queries.shape[1]
        bound = self.relative_error * q_norm * big + self.absolute_error * (q_norm + big)
        if self.metric == "euclidean":
            bound = bound + (dim + 8) * 2.0**-24 * big * big
        # float64 decision arithmetic, far below the float32 terms
        bound = bound + (dim + 16) * 2.0**-50 * (1.0 + self.query_sq_norms[rows] + q_norm * big + big * big)
        return _SAFETY * bound


def _screening_error(precision: str, dim: int, device: torch.device, out_dtype: bool) -> tuple[float, float]:
    """(relative, absolute) rounding of one screening dot product for a matmul precision.

    Relative: input rounding (``2u + u^2``), output rounding and float32 accumulation
    (``(dim + 3) * 2^-24``). Absolute: fp16 subnormal spacing (``2^-25`` per component, times
    ``sqrt(dim)`` through Cauchy-Schwarz). Without ``out_dtype`` a CUDA half matmul may reduce in
    half precision; eight half-precision roundings are added for it.
    """
    acc = (dim + 3) * 2.0**-24
    if precision == "fp32":
        unit = _fp32_matmul_unit_roundoff(device)
        return 2 * unit + unit * unit + acc, 0.0
    unit = 2.0**-11 if precision == "fp16" else 2.0**-8
    relative = 2 * unit + unit * unit + acc
    if not out_dtype:
        relative += unit
        if device.type == "cuda":
            relative += 8 * unit
    absolute = 2.0**-25 * math.sqrt(dim) if precision == "fp16" else 0.0
    return relative, absolute


def _resolve_precision(precision: str, device: torch.device, largest_dot: float) -> str:
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        precision = "fp16" if device.type == "cuda" else "fp32"
    if precision == "fp16" and largest_dot > 3e4:
        # a dot product (bounded by |q| |d|) could overflow float16 (65504)
        logger.warning("Embedding norms too large for float16 screening: screening in float32.")
        precision = "fp32"
    return precision


def _prepare_space(
    query_embeddings: torch.Tensor | np.ndarray,
    corpus_embeddings: torch.Tensor | np.ndarray,
    metric: str,
    precision: str,
    device: str | torch.device | None,
) -> _Space:
    if metric not in METRICS:
        raise ConfigError(f"metric must be one of {METRICS}, got {metric!r}")
    target = _resolve_device(device, query_embeddings, corpus_embeddings)
    queries, query_norms = _as_matrix(query_embeddings, "query_embeddings", target)
    corpus, doc_norms = _as_matrix(corpus_embeddings, "corpus_embeddings", target)
    dim = queries.shape[1]
    if corpus.shape[1] != dim:
        raise ValueError(f"query_embeddings have {dim} dimensions, corpus_embeddings {corpus.shape[1]}")
    # Norms only feed error bounds and the euclidean screening term, whose float32 rounding
    # ((dim + 8) * 2^-24 relative) is part of `screening_error`.
    half_sq = None
    if metric == "cosine":
        # exactly torch.nn.functional.normalize (x / max(|x|, 1e-12)), reusing the norms
        queries = queries / query_norms.clamp_min(1e-12)
        corpus = corpus / doc_norms.clamp_min(1e-12)
        max_doc_norm = 1.0 + dim * 2.0**-22  # unit (or zero) rows up to float32 rounding
        query_sq = torch.full((queries.shape[0],), max_doc_norm**2, dtype=torch.float64, device=target)
    else:
        half_sq = doc_norms[:, 0].square().div_(2)
        max_doc_norm = float(doc_norms.max()) * (1 + 2.0**-16) if doc_norms.numel() else 0.0
        query_sq = torch.linalg.vector_norm(queries, dim=1, dtype=torch.float64).square()
    max_query_norm = math.sqrt(float(query_sq.max())) if query_sq.numel() else 0.0
    precision = _resolve_precision(precision, target, max_query_norm * max_doc_norm)
    screen_dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    out_dtype = screen_dtype != torch.float32 and _supports_out_dtype(screen_dtype, target)
    relative, absolute = _screening_error(precision, queries.shape[1], target, out_dtype)
    logger.debug("Screening in %s on %s (relative error bound %.3g)", precision, target, relative)
    return _Space(
        metric=metric,
        queries=queries,
        corpus=corpus,
        screen_queries=queries.to(screen_dtype),
        screen_corpus=corpus.to(screen_dtype),
        half_sq_norms=half_sq,
        query_norms=query_sq.sqrt(),
        query_sq_norms=query_sq,
        max_doc_norm=max_doc_norm,
        out_dtype=out_dtype,
        relative_error=relative,
        absolute_error=absolute,
    )


@contextlib.contextmanager
def _one_cpu_thread(device: str | torch.device | None):
    """Run CPU bookkeeping (many small operations) on one thread, restoring the count after.

    Each multi-threaded operation synchronises its threads; for small tensors that costs more
    than it saves, and far more on a busy machine. Only the streamed matmul and top-k need them.
    """
    if (device is not None and torch.device(device).type != "cpu") or torch.get_num_threads() == 1:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# ----------------------------------------------------------------------------------------------
# Decision distances (float64, bit-reproducible)
# ----------------------------------------------------------------------------------------------


def _tree_sum(values):
    """Sum over the last dimension with a fixed pairwise tree: same bits on any device or batch.

    Works in place on ``values`` (a float64 scratch tensor or array): element-wise additions
    only, whose order is fixed by the width alone, so torch on any device and numpy agree.
    """
    width = values.shape[-1]
    while width > 1:
        half = width // 2
        if width % 2:
            values[..., 0] += values[..., width - 1]
        values[..., :half] += values[..., half : 2 * half]
        width = half
    first = values[..., 0]
    return first.copy() if isinstance(first, np.ndarray) else first.clone()


def _decision_sums(metric: str, left, right):
    """Float64 dot products (cosine) or squared distances (euclidean) between ``left[n, d]`` and
    each ``right[n, m, d]`` (float32 decision vectors, both torch tensors or both numpy arrays)."""
    if isinstance(left, np.ndarray):
        a = left.astype(np.float64)[:, None, :]
    else:
        a = left.double().unsqueeze(1)
    if metric == "cosine":
        return _tree_sum(a * right)  # float32 promoted exactly; products exact in float64
    diff = a - right
    diff *= diff
    return _tree_sum(diff)


def _decision_distances(metric: str, left, right):
    """Float64 distances ``1 - dot`` or ``sqrt(squared distance)`` (see ``_decision_sums``).

    Both final steps are correctly rounded in numpy and on CUDA; torch's CPU float64 ``sqrt`` is
    not (one unit in the last place off for about 1% of inputs), hence numpy on CPU.
    """
    sums = _decision_sums(metric, left, right)
    if metric == "cosine":
        return 1.0 - sums
    return np.sqrt(sums) if isinstance(sums, np.ndarray) else sums.sqrt()


def _distances_to_candidates(
    space: _Space, left: torch.Tensor, candidates: torch.Tensor, corpus_side: bool = False
) -> torch.Tensor:
    """Decision distances from rows ``left`` (query rows, or corpus rows if ``corpus_side``) to
    corpus rows ``candidates[n, m]`` (``-1`` gives ``inf``), chunked to bound scratch memory.

    Every value is the same function of its two vectors alone (element-wise float64 products and
    a fixed summation tree), so it does not depend on ``n``, ``m`` or the chunking. On CPU the
    arithmetic runs in numpy: single-threaded small operations, which avoid a thread
    synchronisation per operation (costly on a busy machine) and give the same bits.
    """
    source = space.corpus if corpus_side else space.queries
    n, m = candidates.shape
    on_cpu = space.device.type == "cpu"
    if on_cpu:
        source, corpus = source.numpy(), space.corpus.numpy()
        left, candidates = left.numpy(), candidates.numpy()
        out = np.full((n, m), math.inf)
    else:
        corpus = space.corpus
        out = torch.full((n, m), math.inf, dtype=torch.float64, device=space.device)
    step = max(1, _EXACT_CHUNK_ELEMENTS // max(1, m * space.corpus.shape[1]))
    for start in range(0, n, step):
        cand = candidates[start : start + step]
        valid = cand >= 0
        dist = _decision_distances(space.metric, source[left[start : start + step]], corpus[cand * valid])
        out[start : start + step] = dist
        out[start : start + step][~valid] = math.inf
    return torch.from_numpy(out) if on_cpu else out


# ----------------------------------------------------------------------------------------------
# Streamed top-W
# ----------------------------------------------------------------------------------------------


def _screen_block(space: _Space, query_block: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    docs = space.screen_corpus[start:stop]
    if space.out_dtype:
        scores = torch.mm(query_block, docs.T, out_dtype=torch.float32)
    else:
        scores = query_block @ docs.T
        if scores.dtype != torch.float32:
            scores = scores.float()
    if space.half_sq_norms is not None:
        scores.sub_(space.half_sq_norms[start:stop])
    return scores


def _block_topk(scores: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``width`` values of each row of ``scores`` (and their columns), in no particular order.

    On the devices of ``_GROUPED_TOPK_DEVICES`` wide blocks take two steps: the maximum of each
    group of ``_TOPK_GROUP`` columns (one pass over the block, bandwidth-bound), the ``width``
    best groups, then an exact top-``width`` among their columns (and the columns of a partial last
    group). A group holding one of the ``width`` best values has a maximum at least that large,
    so the best groups hold a valid top-``width`` (ties included); a radix top-k over the whole
    block costs several passes.
    """
    n = scores.shape[1]
    group = _TOPK_GROUP
    if scores.device.type not in _GROUPED_TOPK_DEVICES or n < 4 * width * group:
        return scores.topk(min(width, n), dim=1, sorted=False)
    m, full = scores.shape[0], n // group * group
    grouped = scores[:, :full].reshape(m, full // group, group)  # a view when n == full
    best_groups = grouped.amax(dim=2).topk(width, dim=1, sorted=False).indices
    columns = (best_groups.unsqueeze(2) * group + torch.arange(group, device=scores.device)).reshape(m, -1)
    if full < n:
        tail = torch.arange(full, n, device=scores.device).expand(m, n - full)
        columns = torch.cat([columns, tail], dim=1)
    top_scores, pos = scores.gather(1, columns).topk(width, dim=1, sorted=False)
    return top_scores, columns.gather(1, pos)


def _block_sizes(
    device: torch.device, query_block_size: int | None, corpus_block_size: int | None
) -> tuple[int, int]:
    """Block sizes to use on ``device``: the given ones, or the device's defaults for ``None``."""
    default_q, default_c = _BLOCK_SIZES["cuda" if device.type == "cuda" else "cpu"]
    return (
        default_q if query_block_size is None else query_block_size,
        default_c if corpus_block_size is None else corpus_block_size,
    )


def _stream_window(
    space: _Space,
    rows: torch.Tensor,
    window: int,
    excluded: _Exclusions,
    query_block_size: int | None,
    corpus_block_size: int | None,
    show_progress_bar: bool,
    desc: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``window`` screening scores (higher is closer) of queries ``rows``, positives excluded.

    Returns ``(scores [m, window] float32, indices [m, window] long)`` in no particular order;
    ``-inf`` / ``-1`` where fewer than ``window`` documents are available.
    """
    device = space.device
    m = rows.shape[0]
    n_docs = space.n_docs
    window = min(window, n_docs)
    all_scores = torch.full((m, window), -math.inf, dtype=torch.float32, device=device)
    all_indices = torch.full((m, window), -1, dtype=torch.long, device=device)
    if window == 0:
        return all_scores, all_indices
    rows_cpu = rows.cpu().numpy()
    on_cpu = device.type == "cpu"
    query_block_size, corpus_block_size = _block_sizes(device, query_block_size, corpus_block_size)
    n_blocks = math.ceil(m / query_block_size)
    for q0 in tqdm(range(0, m, query_block_size), total=n_blocks, desc=desc, disable=not show_progress_bar):
        q1 = min(q0 + query_block_size, m)
        ex_rows, ex_cols = excluded.for_rows(rows_cpu[q0:q1])
        if not on_cpu:
            ex_rows, ex_cols = torch.from_numpy(ex_rows).to(device), torch.from_numpy(ex_cols).to(device)
        query_block = space.screen_queries[rows[q0:q1]]
        best_scores: torch.Tensor | None = None
        best_indices: torch.Tensor | None = None
        for c0 in range(0, n_docs, corpus_block_size):
            c1 = min(c0 + corpus_block_size, n_docs)
            scores = _screen_block(space, query_block, c0, c1)
            if len(ex_cols) and on_cpu:
                hit = (ex_cols >= c0) & (ex_cols < c1)
                scores.numpy()[ex_rows[hit], ex_cols[hit] - c0] = -math.inf
            elif len(ex_cols):
                # add -inf at excluded entries of this block, 0 elsewhere: no host sync
                hit = (ex_cols >= c0) & (ex_cols < c1)
                penalty = torch.where(hit, -math.inf, 0.0)
                scores.index_put_((ex_rows, (ex_cols - c0).clamp_(0, c1 - c0 - 1)), penalty, accumulate=True)
            top_scores, top_pos = _block_topk(scores, window)
            top_pos += c0
            if best_scores is None:
                best_scores, best_indices = top_scores, top_pos
            else:
                merged_scores = torch.cat([best_scores, top_scores], dim=1)
                merged_indices = torch.cat([best_indices, top_pos], dim=1)
                keep = min(window, merged_scores.shape[1])
                best_scores, pos = merged_scores.topk(keep, dim=1, sorted=False)
                best_indices = merged_indices.gather(1, pos)
        all_scores[q0:q1] = best_scores
        all_indices[q0:q1] = best_indices
    all_indices[all_scores == -math.inf] = -1
    return all_scores, all_indices


def as_float_tensor(vectors: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``vectors`` as a float32 tensor, sharing memory where it can.

    Embeddings read zero-copy from Arrow are read-only arrays; torch warns about wrapping those, but the
    kernel only reads its inputs, so the warning is silenced rather than the array copied (which would double
    the memory of a large corpus).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.as_tensor(vectors, dtype=torch.float32)


def streamed_topk(
    query_embeddings: torch.Tensor | np.ndarray,
    corpus_embeddings: torch.Tensor | np.ndarray,
    k: int,
    metric: Metric = "cosine",
    *,
    exclude: Sequence[Sequence[int]] | None = None,
    query_block_size: int | None = DEFAULT_QUERY_BLOCK_SIZE,
    corpus_block_size: int | None = DEFAULT_CORPUS_BLOCK_SIZE,
    precision: Precision = "auto",
    device: str | torch.device | None = None,
    show_progress_bar: bool = False,
) -> MiningResult:
    """Top-``k`` closest corpus rows of every query, streamed blockwise (plain dense retrieval).

    This is the screening pass of the mining kernel on its own: one matmul and a running top-k
    merge per block, so memory is bounded by the block sizes. The order comes from the screening
    scores (ties and near-ties in no guaranteed order); distances are decision distances.

    Args:
        query_embeddings: ``[n_q, d]`` tensor or array.
        corpus_embeddings: ``[n_d, d]`` tensor or array.
        k: number of documents per query.
        metric: ``"cosine"`` or ``"euclidean"``.
        exclude: optional corpus rows to skip, one list per query row.
        query_block_size: queries per block (default: 1024 on CPU, 4096 on CUDA).
        corpus_block_size: corpus rows per block (default: 16384 on CPU, 65536 on CUDA).
        precision: screening matmul precision (see ``dual_condition_mine``).
        device: torch device; by default the inputs' device, else CUDA when available.
        show_progress_bar: show a tqdm bar over query blocks.

    Returns:
        ``MiningResult`` with ``[n_q, k]`` indices (``-1`` padded) and distances (``inf`` padded).
    """
    _check_sizes(k, query_block_size, corpus_block_size)
    with torch.no_grad():
        with _one_cpu_thread(device):
            space = _prepare_space(query_embeddings, corpus_embeddings, metric, precision, device)
        n_q = space.queries.shape[0]
        excluded = _Exclusions.build(exclude, n_q, space.n_docs, name="exclude")
        rows = torch.arange(n_q, device=space.device)
        scores, indices = _stream_window(
            space, rows, k, excluded, query_block_size, corpus_block_size, show_progress_bar, "Top-k"
        )
        order = scores.argsort(dim=1, descending=True, stable=True)
        indices = indices.gather(1, order)
        distances = _distances_to_candidates(space, rows, indices)
        return _padded_result(indices, distances, k)


# ----------------------------------------------------------------------------------------------
# Mining
# ----------------------------------------------------------------------------------------------


def default_window(k: int) -> int:
    """Candidates kept per query in the first pass: ``max(2k + 8, 16)``.

    Small enough that the running top-W merge costs little more than a top-k (CPU ``topk`` grows
    with W), large enough that conditions rejecting a few of the closest documents rarely force a
    second pass.
    """
    return max(2 * k + 8, 16)


def _check_sizes(k: int, query_block_size: int | None, corpus_block_size: int | None) -> None:
    if not isinstance(k, int) or k < 1:
        raise ConfigError(f"k must be a positive integer, got {k!r}")
    if any(size is not None and size < 1 for size in (query_block_size, corpus_block_size)):
        raise ConfigError("query_block_size and corpus_block_size must be positive")


def _padded_result(indices: torch.Tensor, distances: torch.Tensor, k: int) -> MiningResult:
    n = indices.shape[0]
    out_i = torch.full((n, k), -1, dtype=torch.long)
    out_d = torch.full((n, k), math.inf, dtype=torch.float32)
    width = min(k, indices.shape[1])
    out_i[:, :width] = indices[:, :width].cpu()
    out_d[:, :width] = distances[:, :width].float().cpu()
    out_d[out_i < 0] = math.inf
    return MiningResult(out_i, out_d)


def _outside_lower_bound(space: _Space, rows: torch.Tensor, boundary: torch.Tensor) -> torch.Tensor:
    """Float64 lower bound on the decision distance of any document outside a window whose
    lowest screening score is ``boundary`` (``inf`` when the window holds every document)."""
    top = boundary.double() + space.screening_error(rows)
    if space.metric == "cosine":
        bound = 1.0 - top
    else:
        bound = (space.query_sq_norms[rows] - 2.0 * top).clamp(min=0.0).sqrt()
    return torch.where(boundary == -math.inf, math.inf, bound)


def _sort_window(distances: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Order each window by (distance, corpus index); padding (``inf``) goes last."""
    by_index = indices.masked_fill(indices < 0, torch.iinfo(torch.long).max).argsort(dim=1, stable=True)
    distances, indices = distances.gather(1, by_index), indices.gather(1, by_index)
    by_distance = distances.argsort(dim=1, stable=True)
    return distances.gather(1, by_distance), indices.gather(1, by_distance)


@dataclass
class _Pairs:
    """The pairs being mined, on the device, with their fixed decision distance d(Q, PD)."""

    query: torch.Tensor
    positive: torch.Tensor
    d_qp: torch.Tensor


def mine_negatives(
    query_embeddings: torch.Tensor | np.ndarray,
    corpus_embeddings: torch.Tensor | np.ndarray,
    pairs: torch.Tensor | np.ndarray | Sequence,
    positives: Sequence[Sequence[int]],
    k: int = 1,
    metric: Metric = "cosine",
    *,
    rule: CandidateRule = CandidateRule(),
    query_block_size: int | None = DEFAULT_QUERY_BLOCK_SIZE,
    corpus_block_size: int | None = DEFAULT_CORPUS_BLOCK_SIZE,
    initial_window: int | None = None,
    precision: Precision = "auto",
    device: str | torch.device | None = None,
    show_progress_bar: bool = False,
) -> MiningResult:
    """Exact top-``k`` non-positive documents per pair under a ``CandidateRule``.

    The engine behind ``dual_condition_mine`` and the dense samplers; arguments as there, plus
    ``rule``. Positives of the pair's query (``positives[q]`` and the pair's own positive) are
    never candidates.
    """
    _check_sizes(k, query_block_size, corpus_block_size)
    if rule.max_similarity_ratio is not None and metric != "cosine":
        raise ConfigError("a similarity ratio needs the cosine metric")
    window = default_window(k) if initial_window is None else int(initial_window)
    if window < 1:
        raise ConfigError(f"initial_window must be positive, got {initial_window!r}")
    with torch.no_grad():
        with _one_cpu_thread(device):
            space = _prepare_space(query_embeddings, corpus_embeddings, metric, precision, device)
        n_q, n_d = space.queries.shape[0], space.n_docs
        pairs_cpu = _as_pairs(pairs, n_q, n_d)
        excluded = _Exclusions.build(positives, n_q, n_d, pairs_cpu)
        n_pairs = pairs_cpu.shape[0]
        out_i = torch.full((n_pairs, k), -1, dtype=torch.long)
        out_d = torch.full((n_pairs, k), math.inf, dtype=torch.float32)
        if n_pairs == 0:
            return MiningResult(out_i, out_d)  # (an empty corpus cannot hold a positive)

        pairs_dev = pairs_cpu.to(space.device)
        query, positive = pairs_dev[:, 0], pairs_dev[:, 1]
        # d(Q, PD) through the same function as d(Q, D): a duplicate of PD ties with it exactly.
        state = _Pairs(query, positive, _distances_to_candidates(space, query, positive.unsqueeze(1))[:, 0])
        pending = torch.arange(n_pairs, device=space.device)
        rounds = 0
        while pending.numel():
            rounds += 1
            window = min(window, n_d)
            rows = query[pending].unique()  # sorted
            scores, indices = _stream_window(
                space,
                rows,
                window,
                excluded,
                query_block_size,
                corpus_block_size,
                show_progress_bar,
                "Mining" if rounds == 1 else f"Mining (window {window})",
            )
            with _one_cpu_thread(space.device):
                pending = _settle_on_window(
                    space, rule, k, rows, scores, indices, pending, state, out_i, out_d
                )
            if pending.numel():
                logger.debug("%d pairs need more than %d candidates: widening", pending.numel(), window)
                window *= WINDOW_GROWTH
        if rounds > 1:
            logger.info("Window widened %d time(s), up to %d candidates.", rounds - 1, window)
        return MiningResult(out_i, out_d)


def _settle_on_window(
    space: _Space,
    rule: CandidateRule,
    k: int,
    rows: torch.Tensor,
    scores: torch.Tensor,
    indices: torch.Tensor,
    pending: torch.Tensor,
    pairs: _Pairs,
    out_i: torch.Tensor,
    out_d: torch.Tensor,
) -> torch.Tensor:
    """Settle what the window allows, writing into ``out_i``/``out_d``; return unsettled pairs.

    The window is read in growing prefixes by screening score (``k + 3`` candidates, then
    four times more): a prefix is itself a window with a boundary score, so most pairs settle
    after a handful of exact distances instead of the whole window's.
    """
    window = scores.shape[1]
    order = scores.argsort(dim=1, descending=True)
    scores, indices = scores.gather(1, order), indices.gather(1, order)
    holds_corpus = window >= space.n_docs
    prefix = min(k + 3, window)
    while pending.numel():
        sub_rows = pairs.query[pending].unique()
        at = torch.searchsorted(rows, sub_rows)
        boundary = scores[at, prefix - 1]
        if prefix == window and holds_corpus:
            boundary = torch.full_like(boundary, -math.inf)
        lower = _outside_lower_bound(space, sub_rows, boundary)
        cand = indices[at, :prefix]
        d_qd, cand = _sort_window(_distances_to_candidates(space, sub_rows, cand), cand)
        settled, sel_i, sel_d = _settle_pairs(space, rule, k, sub_rows, d_qd, cand, lower, pending, pairs)
        done = pending[settled].cpu()
        out_i[done] = sel_i[settled].cpu()
        out_d[done] = sel_d[settled].float().cpu()
        pending = pending[~settled]
        if prefix == window:
            break
        prefix = min(prefix * WINDOW_GROWTH, window)
    return pending


def _settle_pairs(
    space: _Space,
    rule: CandidateRule,
    k: int,
    rows: torch.Tensor,
    d_qd: torch.Tensor,
    cand: torch.Tensor,
    lower: torch.Tensor,
    pending: torch.Tensor,
    pairs: _Pairs,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Select the qualifying candidates of pending pairs and tell which pairs are settled.

    ``d_qd``/``cand``: per query of ``rows``, candidates sorted by (distance, index); ``lower``:
    per query, a bound below which no document outside the candidates can lie.
    """
    qpos = torch.searchsorted(rows, pairs.query[pending])
    cand_d, cand_i, lower = d_qd[qpos], cand[qpos], lower[qpos]
    d_qp = pairs.d_qp[pending]
    qualifies = cand_i >= 0
    if rule.closer_than_positive:
        qualifies &= cand_d < d_qp.unsqueeze(1)
    if rule.max_similarity_ratio is not None:
        qualifies &= (1.0 - cand_d) < rule.max_similarity_ratio * (1.0 - d_qp).unsqueeze(1)
    if rule.closer_to_query_than_positive:
        # d(PD, D), a gather and a dot product, only for the first k candidates still in play,
        # then for the next ones of pairs where some failed: every candidate that can be picked
        # is checked, and the count is right whenever it is below k.
        positive = pairs.positive[pending]
        checked = torch.zeros_like(qualifies)
        while True:
            todo = qualifies & ~checked & (qualifies.cumsum(dim=1) <= k)
            pair_pos, slot = todo.nonzero(as_tuple=True)
            if pair_pos.numel() == 0:
                break
            d_pd = _distances_to_candidates(
                space, positive[pair_pos], cand_i[pair_pos, slot].unsqueeze(1), corpus_side=True
            )[:, 0]
            qualifies[pair_pos, slot] = cand_d[pair_pos, slot] < d_pd
            checked[pair_pos, slot] = True
    count = qualifies.sum(dim=1)
    order = (~qualifies).to(torch.int8).argsort(dim=1, stable=True)[:, :k]
    sel_i = cand_i.gather(1, order)
    sel_d = cand_d.gather(1, order)
    if sel_i.shape[1] < k:
        pad = k - sel_i.shape[1]
        sel_i = F.pad(sel_i, (0, pad), value=-1)
        sel_d = F.pad(sel_d, (0, pad), value=math.inf)
    missing = torch.arange(k, device=sel_i.device).unsqueeze(0) >= count.unsqueeze(1)
    sel_i = sel_i.masked_fill(missing, -1)
    sel_d = sel_d.masked_fill(missing, math.inf)
    # Settled: the k-th pick is strictly closer than anything outside the candidates can be, or
    # nothing outside can qualify (the candidates hold the corpus, or condition 1 fails beyond).
    settled = (count >= k) & (sel_d[:, k - 1] < lower)
    settled |= lower == math.inf
    if rule.closer_than_positive:
        settled |= d_qp <= lower
    return settled, sel_i, sel_d


def dual_condition_mine(
    query_embeddings: torch.Tensor | np.ndarray,
    corpus_embeddings: torch.Tensor | np.ndarray,
    pairs: torch.Tensor | np.ndarray | Sequence,
    positives: Sequence[Sequence[int]],
    k: int = 1,
    metric: Metric = "cosine",
    *,
    conditions: Conditions = "both",
    query_block_size: int | None = DEFAULT_QUERY_BLOCK_SIZE,
    corpus_block_size: int | None = DEFAULT_CORPUS_BLOCK_SIZE,
    initial_window: int | None = None,
    precision: Precision = "auto",
    device: str | torch.device | None = None,
    show_progress_bar: bool = False,
) -> MiningResult:
    """Mine the ``k`` closest dual-condition hard negatives of every (query, positive) pair.

    A corpus row D qualifies for pair (Q, PD) when it is not a positive of Q and
    ``d(Q, D) < d(Q, PD)`` and ``d(Q, D) < d(PD, D)`` (``conditions="both"``), or only the first
    (``conditions="query"``, the ablation). Exact for the float64 decision distances described in
    the module docstring, ties broken by lower corpus index.

    Args:
        query_embeddings: ``[n_q, d]`` float tensor or numpy array.
        corpus_embeddings: ``[n_d, d]`` float tensor or numpy array.
        pairs: ``[n_pairs, 2]`` (query row, positive corpus row).
        positives: per query row, every positive corpus row; all are excluded as candidates.
        k: negatives per pair.
        metric: ``"cosine"`` (``1 - cos``, on L2-normalised vectors) or ``"euclidean"``.
        conditions: ``"both"`` or ``"query"``.
        query_block_size: queries per block; with ``corpus_block_size`` it bounds the scratch
            memory (a ``query_block_size x corpus_block_size`` float32 score block). Default:
            1024 on CPU, 4096 on CUDA.
        corpus_block_size: corpus rows per block (default: 16384 on CPU, 65536 on CUDA).
        initial_window: candidates kept per query in the first pass (default ``default_window(k)``);
            pairs that need more are re-streamed with a window four times larger.
        precision: screening matmul: ``"fp32"``, ``"fp16"``, ``"bf16"``, or ``"auto"`` (fp16 on
            CUDA, fp32 elsewhere). Decisions are float64 whatever the screening precision;
            a coarser screen only widens windows more often.
        device: torch device; by default the inputs' device, else CUDA when available. On CPU
            the bookkeeping between matrix products (preparation, exact re-checks) runs with
            ``torch.set_num_threads(1)``, restored afterwards.
        show_progress_bar: show a tqdm bar over query blocks.

    Returns:
        ``MiningResult`` on CPU: ``indices [n_pairs, k]`` (``-1`` padded) and ``distances``
        (``inf`` padded), closest first.

    Example:
        >>> import torch
        >>> docs = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.7, 0.7]])
        >>> result = dual_condition_mine(torch.tensor([[0.8, 0.2]]), docs, [[0, 3]], [[3]], k=3)
        >>> result.indices.tolist(), result.num_found().tolist()
        ([[1, 0, -1]], [2])
    """
    return mine_negatives(
        query_embeddings,
        corpus_embeddings,
        pairs,
        positives,
        k,
        metric,
        rule=CandidateRule.from_conditions(conditions),
        query_block_size=query_block_size,
        corpus_block_size=corpus_block_size,
        initial_window=initial_window,
        precision=precision,
        device=device,
        show_progress_bar=show_progress_bar,
    )


def decision_distances(
    query_embeddings: torch.Tensor | np.ndarray,
    corpus_embeddings: torch.Tensor | np.ndarray,
    query_rows: torch.Tensor | Sequence[int],
    candidates: torch.Tensor,
    metric: Metric = "cosine",
    *,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Distances the kernel would report from ``query_rows[n]`` to corpus rows ``candidates[n, m]``.

    Used by samplers that pick candidates another way (random, BM25) to report comparable
    distances. ``-1`` candidates give ``inf``. Returns ``FloatTensor[n, m]`` on CPU.
    """
    with torch.no_grad(), _one_cpu_thread(device):
        space = _prepare_space(query_embeddings, corpus_embeddings, metric, "fp32", device)
        rows = torch.as_tensor(query_rows, dtype=torch.long, device=space.device)
        cand = torch.as_tensor(candidates, dtype=torch.long, device=space.device)
        return _distances_to_candidates(space, rows, cand).float().cpu()
