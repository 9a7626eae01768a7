"""Several processes: embedding and mining sharded with Accelerate, one process against two.

Two jobs, each run under a launcher (``torchrun`` or ``accelerate launch``) with a given number
of processes and threads per process:

* ``encode``: `build_ensemble_embeddings` with one encoder, no PCA, on the first N SciFact
  documents and queries, with a fresh cache folder. Each rank encodes a share of the missing
  texts (whole length-sorted batches dealt in turn, so each batch is the one a single process
  would form); the vectors are gathered back in order (`hn_trainer.embeddings.distributed`).
* ``mine``: `dual_condition_mine` on seeded synthetic unit vectors (``n_q`` queries, ``n_d``
  documents, ``d`` dimensions, one random positive per query). Each rank mines a contiguous slice
  of the pairs and the results are gathered in order (`hn_trainer.mining.distributed.mine_sharded`).

Every configuration's output (rank 0) is compared with the single-process one: they must be
identical. Wall time runs from a barrier after setup (imports, data) to a barrier after the
gather; repeats alternate the order of configurations, and the load average is recorded around
each run, because the machine may be shared.

The script launches itself: without ``--worker`` it is the orchestrator, which starts one
launcher per configuration, e.g. ``python -m torch.distributed.run --standalone
--nproc_per_node 2 benchmarks/multiprocess_scaling.py --worker --task mine ...``. Processes use
``PartialState(cpu=True)`` (gloo) when no GPU is visible, one GPU each otherwise.

Example:
    HF_HUB_OFFLINE=1 python benchmarks/multiprocess_scaling.py
    HF_HUB_OFFLINE=1 python benchmarks/multiprocess_scaling.py --launcher accelerate \\
        --accelerate_config accelerate_configs/cpu.yaml --configs 1x2 2x1
    # 8 GPUs: one process against eight, one GPU each
    HF_HUB_OFFLINE=1 python benchmarks/multiprocess_scaling.py --launcher accelerate \\
        --accelerate_config accelerate_configs/multi_gpu.yaml --configs 1x4 8x4 \\
        --max_docs 0 --max_queries 0 --n_q 100000 --n_d 1000000
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.embedding_speed import (  # noqa: E402 - after the path set-up
    DEFAULT_DATA,
    DEFAULT_ENCODER,
    DEFAULT_OUTPUT_DIR,
    command_line,
    fmt,
    load_average,
    load_cell,
    load_subset,
    machine_info,
    machine_line,
    uptime,
)
from benchmarks.mining_speed import make_inputs  # noqa: E402
from hn_trainer.mining.distributed import mine_sharded, pair_slice

logger = logging.getLogger(__name__)

TASKS = ("encode", "mine")


# ----------------------------------------------------------------------------------------------
# Worker (one per process, started by a launcher)
# ----------------------------------------------------------------------------------------------


def _encode_job(args: argparse.Namespace, state):
    """The encode job: (run, finish) closures over the loaded data."""
    import numpy as np

    from hn_trainer.embeddings import build_ensemble_embeddings

    corpus, queries, _, _ = load_subset(Path(args.data), args.max_docs, args.max_queries)
    cache_dir = Path(args.out) / "cache"

    def run():
        return build_ensemble_embeddings(
            corpus,
            queries,
            [args.encoder],
            pca_variance=None,
            cache_dir=cache_dir,
            batch_size=args.batch_size,
            state=state,
            show_progress=False,
        )

    def finish(result) -> tuple[dict[str, Any], dict[str, Any]]:
        vectors = np.concatenate([result.corpus_embeddings, result.query_embeddings])
        encoder = result.encoder.encoders[0]
        info = {
            "texts": len(vectors),
            "distinct_texts_encoded": encoder.texts_encoded,
            "encoder_seconds": encoder.seconds,
            "device": encoder.encoder.device,
        }
        return info, {"vectors": vectors}

    return run, finish


def _mine_job(args: argparse.Namespace, state):
    """The mine job: (run, finish) closures over the synthetic inputs."""
    import torch

    queries, corpus, positive = make_inputs(args.n_q, args.n_d, args.dim, args.seed)
    pairs = torch.stack([torch.arange(args.n_q), positive], dim=1)
    positives = [[p] for p in positive.tolist()]
    timing = {"local_seconds": 0.0}

    def timed_mine(*a, **kw):
        from hn_trainer.mining.kernel import dual_condition_mine

        start = time.perf_counter()
        out = dual_condition_mine(*a, **kw)
        timing["local_seconds"] += time.perf_counter() - start
        return out

    # warm-up, not timed: library initialisation on a small problem
    warm = positive[:256] % 4096
    timed_mine(
        queries[:256],
        corpus[:4096],
        torch.stack([torch.arange(len(warm)), warm], dim=1),
        [[p] for p in warm.tolist()],
        k=args.k,
        device=state.device,
    )
    timing["local_seconds"] = 0.0

    def run():
        return mine_sharded(queries, corpus, pairs, positives, k=args.k, state=state, mine=timed_mine)

    def finish(result) -> tuple[dict[str, Any], dict[str, Any]]:
        info = {
            "pairs": int(pairs.shape[0]),
            "local_pairs": len(
                range(*pair_slice(len(pairs), state.process_index, state.num_processes).indices(len(pairs)))
            ),
            "local_seconds": timing["local_seconds"],
            "found": float(result.num_found().float().mean()),
            "device": str(state.device),
        }
        return info, {"indices": result.indices.numpy(), "distances": result.distances.numpy()}

    return run, finish


def worker(args: argparse.Namespace) -> int:
    """One process of a launched configuration: set up, barrier, timed job, barrier, report."""
    import numpy as np
    import torch
    from accelerate import PartialState
    from accelerate.utils import gather_object

    torch.set_num_threads(args.threads)
    state = PartialState(cpu=not torch.cuda.is_available())
    run, finish = (_encode_job if args.task == "encode" else _mine_job)(args, state)

    state.wait_for_everyone()
    wall, cpu = time.perf_counter(), time.process_time()
    result = run()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    state.wait_for_everyone()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu

    info, arrays = finish(result)
    ranks = gather_object(
        [
            {
                "rank": state.process_index,
                "wall_seconds": wall,
                "cpu_seconds": cpu,
                "torch_threads": torch.get_num_threads(),
                "pid": os.getpid(),
                **info,
            }
        ]
    )
    if state.is_main_process:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        np.savez(out / "arrays.npz", **arrays)
        report = {
            "task": args.task,
            "processes": state.num_processes,
            "distributed_type": str(state.distributed_type),
            "backend": getattr(state, "backend", None),
            "threads_per_process": args.threads,
            "seconds": max(r["wall_seconds"] for r in ranks),
            "ranks": sorted(ranks, key=lambda r: r["rank"]),
        }
        (out / "result.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    state.wait_for_everyone()
    if state.num_processes > 1 and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()  # a clean exit: no collective thread left behind
    return 0


# ----------------------------------------------------------------------------------------------
# Orchestrator
# ----------------------------------------------------------------------------------------------


def parse_config(text: str) -> tuple[int, int]:
    """``"2x1"`` -> (2 processes, 1 thread each)."""
    try:
        procs, threads = (int(x) for x in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected PROCESSESxTHREADS such as 2x1, got {text!r}") from exc
    if procs < 1 or threads < 1:
        raise argparse.ArgumentTypeError(f"processes and threads must be positive: {text!r}")
    return procs, threads


def launcher_command(args: argparse.Namespace, processes: int) -> list[str]:
    script = str(Path(__file__).resolve())
    if args.launcher == "torchrun":
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(processes),
            script,
        ]
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(args.accelerate_config),
        "--num_processes",
        str(processes),
        script,
    ]


def worker_arguments(args: argparse.Namespace, task: str, threads: int, out: Path) -> list[str]:
    common = ["--worker", "--task", task, "--threads", str(threads), "--out", str(out)]
    if task == "encode":
        return common + [
            "--data",
            str(args.data),
            "--max_docs",
            str(args.max_docs),
            "--max_queries",
            str(args.max_queries),
            "--encoder",
            args.encoder,
            "--batch_size",
            str(args.batch_size),
        ]
    return common + [
        "--n_q",
        str(args.n_q),
        "--n_d",
        str(args.n_d),
        "--dim",
        str(args.dim),
        "--k",
        str(args.k),
        "--seed",
        str(args.seed),
    ]


def launch(args: argparse.Namespace, task: str, processes: int, threads: int, out: Path) -> dict[str, Any]:
    """Run one configuration under its launcher; returns rank 0's report plus launcher facts."""
    env = dict(os.environ)
    env.update(
        {
            "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads),
            "TOKENIZERS_PARALLELISM": "false",
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])),
        }
    )
    cmd = launcher_command(args, processes) + worker_arguments(args, task, threads, out)
    load_before, start = load_average(), time.perf_counter()
    proc = subprocess.run(
        cmd, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=args.timeout, check=False
    )
    launcher_wall = time.perf_counter() - start
    (out.parent / f"{out.name}.log").write_text(proc.stdout + proc.stderr, encoding="utf-8")
    row: dict[str, Any] = {
        "launcher_seconds": launcher_wall,
        "load_before": load_before,
        "load_after": load_average(),
        "returncode": proc.returncode,
    }
    if proc.returncode != 0 or not (out / "result.json").exists():
        row["error"] = (proc.stdout + proc.stderr)[-3000:]
        logger.error("%s %dx%d failed:\n%s", task, processes, threads, row["error"])
        return row
    row.update(json.loads((out / "result.json").read_text(encoding="utf-8")))
    return row


def compare(reference: Path, other: Path) -> dict[str, Any]:
    """Whether two runs' arrays are identical, and their largest difference."""
    import numpy as np

    with np.load(reference) as a, np.load(other) as b:
        out = {"identical": all(np.array_equal(a[k], b[k]) for k in a.files) and set(a.files) == set(b.files)}
        diffs = []
        for key in a.files:
            x, y = a[key].astype(np.float64), b[key].astype(np.float64)
            finite = np.isfinite(x) & np.isfinite(y)
            diffs.append(float(np.abs(x - y)[finite].max()) if finite.any() else 0.0)
        out["max_abs_diff"] = max(diffs) if diffs else 0.0
    return out


def orchestrate(args: argparse.Namespace) -> dict[str, Any]:
    info = machine_info()
    logger.info("Machine: %s", machine_line(info))
    scratch = Path(tempfile.mkdtemp(prefix="hn-multiprocess-", dir=args.scratch_dir))
    runs: list[dict[str, Any]] = []
    try:
        for task in args.tasks:
            reference: Path | None = None
            for repeat in range(args.repeats):
                order = args.configs if repeat % 2 == 0 else args.configs[::-1]
                for processes, threads in order:
                    out = scratch / f"{task}-{processes}x{threads}-r{repeat + 1}"
                    logger.info(
                        "%s: %d process(es) x %d thread(s), repeat %d (load %s)",
                        task,
                        processes,
                        threads,
                        repeat + 1,
                        load_average(),
                    )
                    row = launch(args, task, processes, threads, out)
                    row.update(
                        task=task,
                        config=f"{processes}x{threads}",
                        repeat=repeat + 1,
                        processes_requested=processes,
                        threads_requested=threads,
                    )
                    arrays = out / "arrays.npz"
                    if "error" not in row:
                        if reference is None and processes == 1:
                            reference = arrays
                            (scratch / f"{task}-reference.npz").write_bytes(arrays.read_bytes())
                            reference = scratch / f"{task}-reference.npz"
                            row["reference"] = True
                        if reference is not None:
                            row["check"] = compare(reference, arrays)
                        else:
                            row["pending_check"] = str(arrays)
                        logger.info(
                            "  %.2f s (launcher %.1f s)%s",
                            row["seconds"],
                            row["launcher_seconds"],
                            f", identical: {row['check']['identical']}" if "check" in row else "",
                        )
                    runs.append(row)
                    shutil.rmtree(out / "cache", ignore_errors=True)
            for row in runs:  # runs that came before the single-process reference
                if row.get("task") == task and "pending_check" in row and reference is not None:
                    row["check"] = compare(reference, Path(row.pop("pending_check")))
    finally:
        if not args.keep_scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    return {
        "machine": info,
        "settings": {
            "launcher": args.launcher,
            "accelerate_config": str(args.accelerate_config) if args.launcher == "accelerate" else None,
            "configs": [f"{p}x{t}" for p, t in args.configs],
            "repeats": args.repeats,
            "encode": {
                "data": str(args.data),
                "max_docs": args.max_docs,
                "max_queries": args.max_queries,
                "encoder": args.encoder,
                "batch_size": args.batch_size,
            },
            "mine": {"n_q": args.n_q, "n_d": args.n_d, "dim": args.dim, "k": args.k, "seed": args.seed},
        },
        "runs": runs,
        "uptime_at_end": uptime(),
    }


def summarise(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Best wall time per (task, configuration), speed-up against the best single process run."""
    rows = []
    for task in TASKS:
        task_runs = [r for r in report["runs"] if r.get("task") == task and "error" not in r]
        if not task_runs:
            continue
        single = [r["seconds"] for r in task_runs if r["processes"] == 1]
        single_best = {
            c: min(r["seconds"] for r in task_runs if r["config"] == c)
            for c in {r["config"] for r in task_runs if r["processes"] == 1}
        }
        for config in dict.fromkeys(r["config"] for r in task_runs):
            group = [r for r in task_runs if r["config"] == config]
            best = min(r["seconds"] for r in group)
            checks = [r["check"] for r in group if "check" in r]
            rows.append(
                {
                    "task": task,
                    "config": config,
                    "processes": group[0]["processes"],
                    "threads_per_process": group[0]["threads_per_process"],
                    "best_seconds": best,
                    "all_seconds": [r["seconds"] for r in group],
                    "cpu_seconds_all_ranks": min(sum(x["cpu_seconds"] for x in r["ranks"]) for r in group),
                    "speedup_vs_best_single": (min(single) / best) if single else None,
                    "speedup_vs": {c: s / best for c, s in single_best.items()},
                    "identical_to_single": all(c["identical"] for c in checks) if checks else None,
                    "max_abs_diff": max((c["max_abs_diff"] for c in checks), default=None),
                }
            )
    return rows


def to_markdown(report: dict[str, Any], summary: list[dict[str, Any]], command: str) -> str:
    s = report["settings"]
    enc, mine = s["encode"], s["mine"]
    launcher = (
        "`torchrun --standalone --nproc_per_node P`"
        if s["launcher"] == "torchrun"
        else f"`accelerate launch --config_file {s['accelerate_config']} --num_processes P`"
    )
    lines = [
        "# Several processes: one against two",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine_line(report['machine'])}.",
        "",
        f"Load: at start `{report['machine']['uptime_at_start']}`; at end `{report['uptime_at_end']}`.",
        "",
        f"Launcher: {launcher}; configuration `PxT` = P processes x T threads each "
        "(`torch.set_num_threads`, `OMP_NUM_THREADS`). "
        f"encode: `{enc['encoder']}` on the first {enc['max_docs'] or 'all'} SciFact documents + "
        f"{enc['max_queries'] or 'all'} queries, fresh cache, no PCA, batch {enc['batch_size']}. "
        f"mine: `dual_condition_mine` (both conditions), {mine['n_q']} x {mine['n_d']} x {mine['dim']}, "
        f"k={mine['k']}, one positive per query. Wall seconds run from a barrier after setup to a barrier "
        "after the gather (model loading is inside for encode); CPU seconds are summed over ranks. "
        "Wall seconds far above CPU seconds per thread mean the processes waited for a core: other "
        "programs held them (see the load).",
        "",
        "| task | config | processes | threads/process | best wall s | all wall s | CPU s (all ranks) "
        "| speed-up vs 1 process | identical to 1 process |",
        "|---|---|---:|---:|---:|---|---:|---|---|",
    ]
    for r in summary:
        speedups = (
            ", ".join(f"{v:.2f}x vs {c}" for c, v in sorted(r["speedup_vs"].items()) if c != r["config"])
            or "-"
        )
        ident = (
            "-"
            if r["identical_to_single"] is None
            else ("yes" if r["identical_to_single"] else f"no (max diff {r['max_abs_diff']:.1e})")
        )
        lines.append(
            f"| {r['task']} | {r['config']} | {r['processes']} | {r['threads_per_process']} | "
            f"{fmt(r['best_seconds'])} | {', '.join(fmt(x) for x in r['all_seconds'])} | "
            f"{fmt(r['cpu_seconds_all_ranks'])} | {speedups} | {ident} |"
        )
    lines += [
        "",
        "Every run, in the order it ran:",
        "",
        "| task | config | repeat | wall s | launcher s | per-rank wall / CPU s | load before -> after "
        "| identical |",
        "|---|---|---:|---:|---:|---|---|---|",
    ]
    for r in report["runs"]:
        if "error" in r:
            lines.append(
                f"| {r['task']} | {r['config']} | {r['repeat']} | failed | {fmt(r['launcher_seconds'])} "
                f"| - | - | - |"
            )
            continue
        per_rank = "; ".join(
            f"r{x['rank']}: {fmt(x['wall_seconds'])} / {fmt(x['cpu_seconds'])}" for x in r["ranks"]
        )
        check = r.get("check")
        ident = (
            "-" if check is None else ("yes" if check["identical"] else f"no ({check['max_abs_diff']:.1e})")
        )
        lines.append(
            f"| {r['task']} | {r['config']} | {r['repeat']} | {fmt(r['seconds'])} | "
            f"{fmt(r['launcher_seconds'])} | {per_rank} | {load_cell(r)} | {ident} |"
        )
    lines += [
        "",
        "## Several GPUs",
        "",
        "One process per GPU; each rank embeds its share of the texts on its own GPU (fp16) and mines "
        "its slice of the pairs there. From the repository root:",
        "",
        "```bash",
        "# the benchmark: one process against eight, one GPU each",
        "HF_HUB_OFFLINE=1 python benchmarks/multiprocess_scaling.py --launcher accelerate \\",
        "    --accelerate_config accelerate_configs/multi_gpu.yaml --configs 1x4 8x4 \\",
        "    --max_docs 0 --max_queries 0 --n_q 100000 --n_d 1000000",
        "# a single worker directly, as the orchestrator starts it",
        "accelerate launch --config_file accelerate_configs/multi_gpu.yaml --num_processes 8 \\",
        "    benchmarks/multiprocess_scaling.py --worker --task mine --threads 4 --out /tmp/mine8 \\",
        "    --n_q 100000 --n_d 1000000 --dim 256 --k 1",
        "# or with torchrun",
        "torchrun --standalone --nproc_per_node 8 benchmarks/multiprocess_scaling.py \\",
        "    --worker --task encode --threads 4 --out /tmp/encode8 --max_docs 0 --max_queries 0",
        "```",
        "",
        "Each rank holds the whole corpus matrix on its GPU and mines its slice of the pairs (fp16 "
        "screening, float64 decisions); the embedding ranks encode in fp16. On CPU the same script uses "
        "`PartialState(cpu=True)` (gloo); `accelerate_configs/cpu.yaml` starts two processes through the "
        "torch launcher.",
    ]
    return "\n".join(lines) + "\n"


def write_outputs(output_dir: Path, report: dict[str, Any], summary, command: str) -> str:
    from hn_trainer.io import atomic_path, write_json

    markdown = to_markdown(report, summary, command)
    write_json(output_dir / "multiprocess_scaling.json", {"command": command, **report, "summary": summary})
    with atomic_path(output_dir / "multiprocess_scaling.md") as tmp:
        tmp.write_text(markdown, encoding="utf-8")
    return markdown


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument(
        "--configs",
        nargs="+",
        type=parse_config,
        default=[(1, 2), (2, 1), (1, 1)],
        help="PROCESSESxTHREADS per configuration (default: 1x2 2x1 1x1)",
    )
    parser.add_argument("--repeats", type=int, default=2, help="repeats; the order alternates (default 2)")
    parser.add_argument("--launcher", choices=("torchrun", "accelerate"), default="torchrun")
    parser.add_argument(
        "--accelerate_config",
        "--accelerate-config",
        type=Path,
        default=REPO_ROOT / "accelerate_configs" / "cpu.yaml",
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument(
        "--max_docs", "--max-docs", type=int, default=256, help="documents to encode (0: all)"
    )
    parser.add_argument(
        "--max_queries", "--max-queries", type=int, default=64, help="queries to encode (0: all)"
    )
    parser.add_argument("--encoder", default=DEFAULT_ENCODER)
    parser.add_argument("--batch_size", "--batch-size", type=int, default=32)
    parser.add_argument("--n_q", "--n-q", type=int, default=10_000)
    parser.add_argument("--n_d", "--n-d", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--k", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per launched configuration")
    parser.add_argument("--scratch_dir", "--scratch-dir", default=None)
    parser.add_argument("--keep_scratch", "--keep-scratch", action="store_true")
    parser.add_argument("--output_dir", "--output-dir", type=Path, default=DEFAULT_OUTPUT_DIR)
    parser.add_argument("--worker", action="store_true", help="run as one launched process (internal)")
    parser.add_argument("--task", choices=TASKS, help="worker: which job")
    parser.add_argument("--threads", type=int, default=1, help="worker: torch threads")
    parser.add_argument("--out", help="worker: folder for rank 0's result")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("sentence_transformers", "transformers", "httpx", "hn_trainer.embeddings"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    command = command_line()
    report = orchestrate(args)
    summary = summarise(report)
    print(write_outputs(args.output_dir, report, summary, command))
    return 0 if all("error" not in r for r in report["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
