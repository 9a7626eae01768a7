"""`RerankingEvaluator`: rerank first-stage candidates with a `CrossEncoder` and report MRR, nDCG and Recall.

It is a sentence-transformers evaluator (a `CrossEncoderRerankingEvaluator` fed by a first-stage run instead
of sample dicts), so ``CrossEncoderTrainer(..., evaluator=RerankingEvaluator(...))`` logs ``eval_mrr@10`` and
friends, can select the best checkpoint on them, and the model card lists them. The metrics are those of
`hn_trainer.evaluation.metrics.retrieval_metrics` (the trec_eval conventions, checked against ranx).
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sentence_transformers.base.evaluation.evaluator import BaseEvaluator
from sentence_transformers.cross_encoder.evaluation import CrossEncoderRerankingEvaluator

from hn_trainer.errors import HNTrainerError
from hn_trainer.evaluation.metrics import retrieval_metrics
from hn_trainer.evaluation.reranking import check_cross_encoder, fuse_runs, rerank

if TYPE_CHECKING:
    from sentence_transformers import CrossEncoder

    from hn_trainer.data import RetrievalData

logger = logging.getLogger(__name__)


class RerankingEvaluator(CrossEncoderRerankingEvaluator):
    """Rerank first-stage candidate lists with the model and score the run against relevance judgements.

    Only queries with both candidates and judgements are kept. Scoring goes through
    `hn_trainer.evaluation.reranking.score_pairs` with ``accelerate.PartialState()``: called on every rank
    of a multi-process run, each rank scores one shard and the scores are gathered once; inside
    ``CrossEncoderTrainer.evaluate`` (where only rank 0 runs evaluators and the others serve its
    ``predict`` calls) the host shards ``predict`` itself. The model's train/eval mode is restored afterwards.

    Args:
        candidates: First-stage run ``{query_id: {doc_id: score}}`` (`hn_trainer.evaluation.first_stage`).
        query_texts: ``{query_id: text}``.
        doc_texts: ``{doc_id: text}``.
        qrels: ``{query_id: {doc_id: relevance}}``.
        batch_size: Pairs per forward pass.
        mrr_at: MRR cut-offs.
        ndcg_at: nDCG cut-offs.
        recall_at: Recall cut-offs.
        name: Optional name: metric keys become ``"{name}_mrr@10"`` etc.
        show_progress_bar: Show a progress bar while reranking.
        fusion_weight: When set, also report the metrics of `fuse_runs` (first stage and reranker, this
            reranker weight) as ``fused_mrr@10`` etc.
        write_csv: Append the metrics to a CSV file in ``output_path`` when one is given.
        bf16: Score under bfloat16 autocast, as ``--bf16`` training runs (see `score_pairs`).

    Attributes:
        last_run: The reranked run of the latest call (raw logits).
        last_fused_run: The fused run of the latest call (with ``fusion_weight``).
        runs_by_step: Runs of calls made during training (``steps >= 0``), by step: the latest and the best
            by the primary metric so far, the two a trainer can end on; see `run_at_step`.

    Example:
        >>> evaluator = RerankingEvaluator(candidates, queries, docs, qrels, name="dev")  # doctest: +SKIP
        >>> evaluator(CrossEncoder("path/to/reranker"))  # doctest: +SKIP
        {'dev_mrr@3': 0.61, 'dev_mrr@10': 0.63, 'dev_ndcg@10': 0.68, 'dev_recall@10': 0.84}
    """

    def __init__(
        self,
        candidates: Mapping[str, Mapping[str, float]],
        query_texts: Mapping[str, str],
        doc_texts: Mapping[str, str],
        qrels: Mapping[str, Mapping[str, int]],
        *,
        batch_size: int = 64,
        mrr_at: Sequence[int] = (3, 10),
        ndcg_at: Sequence[int] = (10,),
        recall_at: Sequence[int] = (10,),
        name: str = "",
        show_progress_bar: bool = False,
        fusion_weight: float | None = None,
        write_csv: bool = True,
        bf16: bool = False,
    ) -> None:
        # The parent's __init__ wants sample dicts; the attributes it sets that still apply are set here.
        BaseEvaluator.__init__(self)
        self.candidates = {q: dict(docs) for q, docs in candidates.items() if q in qrels}
        if not self.candidates:
            raise HNTrainerError("no evaluation query has both candidates and relevance judgements")
        self.qrels = {q: dict(rels) for q, rels in qrels.items() if q in self.candidates}
        self.query_texts = query_texts
        self.doc_texts = doc_texts
        self.batch_size = batch_size
        self.mrr_at, self.ndcg_at, self.recall_at = tuple(mrr_at), tuple(ndcg_at), tuple(recall_at)
        if not self.metric_names():
            raise HNTrainerError("the evaluator needs at least one metric cut-off")
        if fusion_weight is not None and not 0.0 <= fusion_weight <= 1.0:
            raise HNTrainerError(f"fusion weight must be in [0, 1], got {fusion_weight}")
        self.name = name or ""
        self.show_progress_bar = show_progress_bar
        self.fusion_weight = fusion_weight
        self.prompt_name = None
        self.write_csv = write_csv
        self.bf16 = bf16
        self.csv_file = "RerankingEvaluator" + (f"_{self.name}" if self.name else "") + "_results.csv"
        self.greater_is_better = True
        self.primary_metric = "mrr@10" if 10 in self.mrr_at else self.metric_names()[0]
        self.last_run: dict[str, dict[str, float]] | None = None
        self.last_fused_run: dict[str, dict[str, float]] | None = None
        self.runs_by_step: dict[int, dict[str, dict[str, float]]] = {}
        self._best_step: tuple[float, int] | None = None

    @classmethod
    def from_data(
        cls,
        data: RetrievalData,
        split: str,
        candidates: Mapping[str, Mapping[str, float]],
        **kwargs: Any,
    ) -> RerankingEvaluator:
        """Build from a `hn_trainer.data.RetrievalData` (texts) and one of its qrels splits (judgements).

        Args:
            data: The corpus, queries and qrels.
            split: The qrels split to judge against, e.g. ``"test"``.
            candidates: First-stage run over (some of) that split's queries.
            **kwargs: Keyword arguments of `RerankingEvaluator`.
        """
        query_texts = dict(zip(data.queries["_id"], data.query_texts()))
        doc_texts = dict(zip(data.corpus["_id"], data.document_texts()))
        return cls(candidates, query_texts, doc_texts, data.relevant(split), **kwargs)

    def metric_names(self) -> list[str]:
        """The reranker's metric names, without a name prefix (``fused_`` ones are added with fusion)."""
        return (
            [f"mrr@{k}" for k in self.mrr_at]
            + [f"ndcg@{k}" for k in self.ndcg_at]
            + [f"recall@{k}" for k in self.recall_at]
        )

    def _metrics(self, run: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
        values = retrieval_metrics(
            run, self.qrels, mrr_at=self.mrr_at, ndcg_at=self.ndcg_at, recall_at=self.recall_at
        )
        return {key: float(value) for key, value in values.items()}

    def __call__(
        self, model: CrossEncoder, output_path: str | None = None, epoch: int = -1, steps: int = -1
    ) -> dict[str, float]:
        """Rerank the candidates with ``model`` and return the metrics.

        Args:
            model: A `CrossEncoder` with one output (`ConfigError` otherwise).
            output_path: Folder for the CSV of metrics (none is written without it).
            epoch: Training epoch, for the logs and the model card (``-1``: not training).
            steps: Training step, for the logs and the model card.

        Returns:
            ``{"mrr@3": ..., "mrr@10": ..., "ndcg@10": ..., "recall@10": ...}`` (``"{name}_..."`` with a
            name), plus ``"fused_..."`` keys with ``fusion_weight``.
        """
        from accelerate import PartialState

        check_cross_encoder(model)
        where = f" after epoch {epoch}, step {steps}" if epoch != -1 else ""
        logger.info(
            "RerankingEvaluator: %d queries%s%s",
            len(self.candidates),
            f" of {self.name}" if self.name else "",
            where,
        )
        was_training = model.training
        try:
            run = rerank(
                model,
                self.candidates,
                self.query_texts,
                self.doc_texts,
                batch_size=self.batch_size,
                show_progress_bar=self.show_progress_bar,
                state=PartialState(),
                bf16=self.bf16,
            )
        finally:
            model.train(was_training)
        self.last_run = run
        metrics = self._metrics(run)
        if self.fusion_weight is not None:
            self.last_fused_run = fuse_runs(self.candidates, run, self.fusion_weight)
            metrics.update(
                {f"fused_{key}": value for key, value in self._metrics(self.last_fused_run).items()}
            )
        for key, value in metrics.items():
            logger.info("  %-16s %.4f", key, value)

        if output_path is not None and self.write_csv:
            self._write_csv(output_path, epoch, steps, metrics)
        metrics = self.prefix_name_to_metrics(metrics, self.name)  # (and primary_metric, with a name)
        if steps >= 0:
            self._keep(run, steps, metrics[self.primary_metric])
        self.store_metrics_in_model_card_data(model, metrics, epoch, steps)
        return metrics

    def _keep(self, run: dict[str, dict[str, float]], steps: int, value: float) -> None:
        if self._best_step is None or value > self._best_step[0]:  # ties keep the earlier step, as the Trainer
            self._best_step = (value, steps)
        self.runs_by_step = {step: kept for step, kept in self.runs_by_step.items() if step == self._best_step[1]}
        self.runs_by_step[steps] = run

    def forget_runs(self) -> None:
        """Drop the runs kept by step, before the evaluator serves another training (whose steps count
        from 0 again)."""
        self.runs_by_step, self._best_step = {}, None

    def run_at_step(self, steps: int) -> dict[str, dict[str, float]] | None:
        """The run of the call made at training step ``steps``, if it is still kept (the latest call during
        training, or the best by the primary metric); ``None`` otherwise. A model loaded from the checkpoint
        of that step scores the same, so the run spares scoring it again."""
        return self.runs_by_step.get(steps)

    def _write_csv(self, output_path: str, epoch: float, steps: int, metrics: dict[str, float]) -> None:
        os.makedirs(output_path, exist_ok=True)
        path = os.path.join(output_path, self.csv_file)
        exists = os.path.isfile(path)
        with open(path, "a" if exists else "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            if not exists:
                writer.writerow(["epoch", "steps", *metrics])
            writer.writerow([epoch, steps, *metrics.values()])

    def get_config_dict(self) -> dict[str, Any]:
        """The settings the model card lists with the metrics."""
        config: dict[str, Any] = {
            "queries": len(self.candidates),
            "mrr_at": list(self.mrr_at),
            "ndcg_at": list(self.ndcg_at),
            "recall_at": list(self.recall_at),
        }
        if self.fusion_weight is not None:
            config["fusion_weight"] = self.fusion_weight
        return config
