"""Comparison rows with several seeds, each run by the recipe itself (`hn-trainer train`), with paired tests and
95% intervals.

Every run is ``hn-trainer train --config CONFIG`` plus the row's flags and ``--seed S``, in its own process, so
its numbers come from the code users run: the same mining, warm start, training, validation-chosen checkpoint
and fusion weight, and evaluation. The benchmark only adds rows, seeds and statistics.

Per seed, the ``ours`` row runs first with the config's warm start (``--warm_start distill`` by default); it
saves the warm-started base to ``warm_start/final``, and every other row of that seed fine-tunes that same
model (``--warm_start none``), so rows differ only in how negatives are chosen. The ``ours`` runs also give the
first stage and the warm-started base rows. A ``warm start, ...`` row builds a warm start of its own
(``--warm_start_only``, its flags naming what differs) and is scored as a warm-started base, against the config's;
a row of `BASE_ROWS` fine-tunes such a warm start instead of ours'.

Runs are resumable: each finished (row, seed) writes ``OUT/<row>/seed<S>.json`` (the recipe's
``results.json`` plus the machine, the load average before and after, and the command) and is never rerun, so
rows accumulate across sessions and machines; commit the files as they finish. The models stay in ``--work``:
where a seed's ``ours`` result is kept but its warm-started base is not (a fresh checkout), that base is built
again (``--warm_start_only``) and must score on the test queries as the kept result says, within
`REBUILD_TOLERANCE`.
``--report`` rebuilds ``OUT/README.md`` from whatever is there.

Statistics, on the test queries: a row's score is the mean over its seeds of the test MRR@10; per query, the
seed-averaged MRR@10 is what the 95% interval (bootstrap over queries, 10,000 seeded resamples) and the paired
test against ``ours`` (permutation test over per-query differences, on the seeds both rows have) use.

Example:
    HF_HUB_OFFLINE=1 python benchmarks/power.py --seeds 0 1 2                    # the methods, three seeds
    HF_HUB_OFFLINE=1 python benchmarks/power.py --rows ablations --seeds 0       # the ablations, one seed
    HF_HUB_OFFLINE=1 python benchmarks/power.py --rows ours random --seeds 0     # some rows
    python benchmarks/power.py --report                                           # the table only
    python benchmarks/power.py --compare "sentence-transformers mine_hard_negatives" "first stage"  # two rows
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks._machine import load_average, machine_info  # noqa: E402
from hn_trainer.io import write_json, write_text

DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "paper"
DEFAULT_CONFIG = REPO_ROOT / "recipes" / "configs" / "scifact.yaml"
OURS = "ours"
ROWS: dict[str, list[str]] = {
    OURS: [],  # the config: dual-condition negatives, the paper's "none" for pairs without one
    "ours + fallback condition2": ["--fallback", "condition2"],
    "random": ["--method", "random"],
    "bm25": ["--method", "bm25"],
    "in-batch": ["--method", "random", "--num_negatives", "0", "--in_batch_negatives", "true",
                 "--fill_random_negatives", "false"],
    "dense top-k": ["--method", "dense_topk"],
    "dense top-k + re-mining": ["--method", "dense_topk", "--remine_steps", "70"],  # twice in 2 epochs
    "positive-aware": ["--method", "positive_aware"],
    "sentence-transformers mine_hard_negatives": ["--method", "st_mine"],
    # ablations of ours
    "ours, condition 1 only": ["--conditions", "query"],
    "ours, one encoder (all-MiniLM-L6-v2)": ["--encoders", "sentence-transformers/all-MiniLM-L6-v2"],
    # all-MiniLM-L6-v2 as the miner and as the warm start's teacher: fine-tunes that warm start (`BASE_ROWS`)
    "ours, one encoder, on the warm start it teaches": ["--encoders", "sentence-transformers/all-MiniLM-L6-v2"],
    # the paper's ensemble is of strong, diverse encoders; the config's packaged one adds two weak ones to MiniLM
    "ours, two strong encoders (all-MiniLM-L6-v2, all-mpnet-base-v2)": [
        "--encoders", "sentence-transformers/all-MiniLM-L6-v2,sentence-transformers/all-mpnet-base-v2"],
    "ours, PCA 80%": ["--pca_variance", "0.8"],
    "ours, concatenation without PCA": ["--pca_variance", "1.0"],
    # the paper's triples only: pairs without a dual-condition negative are dropped, not given a random one
    "ours, pairs without a negative dropped": ["--keep_pairs_without_negatives", "false"],
    # a control: ours' fine-tuning again, from the seed's warm start as the other rows get it (rebuilt on another
    # machine, say): how far a row moves with nothing changed
    "ours, fine-tuned again (control)": [],
    # fine-tuning settings of ours, compared on the validation queries (same compute per epoch as the config)
    "ours, lce with 3 negatives, 1 epoch": ["--loss", "lce", "--num_negatives", "3",
                                            "--per_device_train_batch_size", "4", "--num_train_epochs", "1",
                                            "--eval_strategy", "steps", "--eval_steps", "103",
                                            "--save_strategy", "steps", "--save_steps", "103"],
    "ours, learning rate 2e-5": ["--learning_rate", "2e-5"],
    # precision on the CPU: bf16 autocast is the default where the CPU runs it natively (AVX-512 BF16 or AMX);
    # the first row measured it against the fp32 default of results/paper-v1, the second measures fp32 now
    "ours, bf16 autocast on the CPU": ["--bf16", "true", "--use_cpu", "true"],
    "ours, fp32 on the CPU": ["--bf16", "false"],
    # other warm starts, built on their own (--warm_start_only) and compared with the config's: the teacher that
    # mines best as one encoder, instead of the mining ensemble
    "warm start, taught by one encoder (all-MiniLM-L6-v2)": [
        "--warm_start_encoders", "sentence-transformers/all-MiniLM-L6-v2"],
    # the older stage: (title, body) pairs with the ensemble's dense top-k negatives, no checkpoint chosen
    "warm start, titles with mined negatives": ["--warm_start", "titles"],
}
"""Row name -> flags added to the config (the ablation rows may run with fewer seeds; the report says how many)."""
ABLATIONS = tuple(name for name in ROWS if name.startswith(f"{OURS}, "))
WARM_START = "warm-started base"
WARM_START_ROWS = tuple(name for name in ROWS if name.startswith("warm start, "))
"""Rows that build a warm start of their own instead of fine-tuning the seed's: their score is their warm-started
base's, compared with the config's (`WARM_START`), not with ours."""
BASE_ROWS = {"ours, one encoder, on the warm start it teaches": "warm start, taught by one encoder (all-MiniLM-L6-v2)"}
"""Rows that fine-tune the warm start of a warm-start row (of the same seed) instead of ours'."""
GROUPS = {"methods": tuple(name for name in ROWS if name not in (*ABLATIONS, *WARM_START_ROWS)),
          "ablations": ABLATIONS, "warm starts": WARM_START_ROWS}
"""``--rows`` also takes these names."""
SHARED_ROWS = ("first stage", WARM_START)
RECORD = "power-record.json"
"""A run folder's record (``results.json`` with the command, machine and load), kept beside it in ``--work``."""


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-").replace("--", "-")


def result_path(out: Path, row: str, seed: int) -> Path:
    return out / slug(row) / f"seed{seed}.json"


def warm_start_result_path(out: Path, seed: int, row: str = OURS) -> Path:
    """Where the result of a seed's warm start built again goes (beside the result of the `row` that built it)."""
    return out / slug(row) / f"seed{seed}-warm-start.json"


def warm_start_dir(work: Path, seed: int, row: str = OURS) -> Path:
    """Where a seed's ``ours`` run (or warm-start `row`) saves the warm-started base that rows fine-tune."""
    return work / slug(row) / f"seed{seed}" / "warm_start" / "final"


def base_row(row: str) -> str:
    """The row whose warm-started base `row` fine-tunes: ours', or a warm-start row's (`BASE_ROWS`)."""
    return BASE_ROWS.get(row, OURS)


def run_command(row: str, seed: int, config: Path, out: Path, work: Path, extra: list[str]) -> list[str]:
    """The ``hn-trainer train`` command of one (row, seed)."""
    flags = ["--config", str(config), "--seed", str(seed), "--output_dir", str(work / slug(row) / f"seed{seed}"),
             "--save_total_limit", "1"]
    if row in WARM_START_ROWS:
        flags += ["--warm_start_only", "true", "--evaluate_base", "false"]
    elif row != OURS:
        base = warm_start_dir(work, seed, base_row(row))
        flags += ["--model_name_or_path", str(base), "--warm_start", "none", "--evaluate_base", "false"]
    return [sys.executable, "-m", "hn_trainer.cli", "train", *flags, *ROWS[row], *extra]


REBUILD_TOLERANCE = {"mean": 0.005, "queries": 0.05}
"""How far a warm start built again may score from the kept one on the test queries: its mean MRR@10 within
``mean``, and at most a ``queries`` share of the queries scored differently. The same commit and seed give the
same model up to floating-point order (bf16 autocast on another CPU flips a few near-ties); a different model
moves far more queries than that."""


def rebuild_deviation(rebuilt: dict[str, float], kept: dict[str, float]) -> dict:
    """How a rebuilt warm start's per-query test MRR@10 differs from the kept one's."""
    if rebuilt.keys() != kept.keys():
        return {"queries": len(kept), "queries_differing": len(kept), "mean_difference": 1.0, "max_difference": 1.0}
    differences = np.array([rebuilt[q] - kept[q] for q in kept])
    return {"queries": len(kept), "queries_differing": int((np.abs(differences) > 1e-6).sum()),
            "mean_difference": float(differences.mean()), "max_difference": float(np.abs(differences).max())}


def rebuild_within_tolerance(deviation: dict) -> bool:
    return (abs(deviation["mean_difference"]) <= REBUILD_TOLERANCE["mean"]
            and deviation["queries_differing"] <= REBUILD_TOLERANCE["queries"] * deviation["queries"])


def kept_warm_start_step(result: dict) -> int | None:
    """The warm-start step a result's model was kept at ("checkpoint of step 237 of 313"), if it names one."""
    found = re.search(r"checkpoint of step (\d+) of \d+", result.get("selection", {}).get("warm_start", ""))
    return int(found.group(1)) if found else None


def rebuild_command(seed: int, config: Path, out: Path, work: Path, extra: list[str], kept: dict,
                    row: str = OURS) -> list[str]:
    """The command that builds again the warm start of the kept result `kept` of ``ours`` (or of warm-start
    `row`), at the step it kept."""
    step = kept_warm_start_step(kept)
    only = [] if row in WARM_START_ROWS else ["--warm_start_only", "true", "--evaluate_base", "false"]
    command = [*run_command(row, seed, config, out, work, extra), *only,
               *(["--warm_start_step", str(step)] if step else [])]
    command[command.index("--output_dir") + 1] = str(rebuild_dir(work, seed, row))
    return command


def rebuild_dir(work: Path, seed: int, row: str = OURS) -> Path:
    return work / slug(row) / f"seed{seed}-warm-start"


def rebuild_warm_start(seed: int, config: Path, out: Path, work: Path, extra: list[str], row: str = OURS) -> None:
    """Build again the warm-started base of a seed whose ``ours`` (or warm-start `row`) result is kept but whose
    model is not (a fresh checkout, another machine): the command with ``--warm_start_only``, in a folder beside
    the run's (a finished one there is used, not run again). Its test scores must be those of the kept result within
    `REBUILD_TOLERANCE`, else rows fine-tuned from it would not be comparable; the deviation is recorded. It
    keeps the warm-start step the kept result names (``--warm_start_step``): two validation scores 0.0002 apart
    pick different checkpoints on another CPU otherwise."""
    folder = rebuild_dir(work, seed, row)
    kept_result = json.loads(result_path(out, row, seed).read_text())
    command = rebuild_command(seed, config, out, work, extra, kept_result, row)
    if (folder / RECORD).exists() and (folder / "warm_start" / "final").is_dir():
        record = json.loads((folder / RECORD).read_text())
        print(f"[power] {row}, seed {seed}: the kept result's warm start, built again in {folder}", flush=True)
    else:
        print(f"[power] {row}, seed {seed}: the kept result's warm start, again: {shlex.join(command)}", flush=True)
        record = _execute(command, folder, row, seed)
    kept = kept_result["per_query_mrr@10"]["warm-started base"]
    record["rebuilt_vs_kept"] = deviation = rebuild_deviation(record["per_query_mrr@10"]["warm-started base"], kept)
    if not rebuild_within_tolerance(deviation):
        raise RuntimeError(
            f"the warm start of seed {seed} built again in {folder} does not score as the kept one: "
            f"{deviation['queries_differing']} of {deviation['queries']} test queries differ, mean MRR@10 "
            f"{deviation['mean_difference']:+.4f} (tolerance {REBUILD_TOLERANCE}): delete "
            f"{result_path(out, row, seed)} and the rows of that seed that fine-tune it to run them again together")
    print(f"[power] {row}, seed {seed}: the rebuilt warm start scores as the kept one within tolerance "
          f"({deviation['queries_differing']} of {deviation['queries']} test queries differ, mean "
          f"{deviation['mean_difference']:+.4f})", flush=True)
    target = warm_start_dir(work, seed, row)
    target.parent.mkdir(parents=True, exist_ok=True)
    (folder / "warm_start" / "final").replace(target)
    if not warm_start_result_path(out, seed, row).exists():
        write_json(warm_start_result_path(out, seed, row), record, indent=1)


def run_one(row: str, seed: int, config: Path, out: Path, work: Path, extra: list[str]) -> dict:
    """Run one (row, seed) unless its result exists; returns the result."""
    path = result_path(out, row, seed)
    if path.exists():
        return json.loads(path.read_text())
    base = base_row(row)
    if row not in (OURS, *WARM_START_ROWS) and not warm_start_dir(work, seed, base).exists():
        if result_path(out, base, seed).exists():
            rebuild_warm_start(seed, config, out, work, extra, base)
        else:
            run_one(base, seed, config, out, work, extra)
    command = run_command(row, seed, config, out, work, extra)
    print(f"[power] {row}, seed {seed}: {shlex.join(command)}", flush=True)
    record = _execute(command, work / slug(row) / f"seed{seed}", row, seed)
    write_json(path, record, indent=1)
    return record


def _execute(command: list[str], folder: Path, row: str, seed: int) -> dict:
    """Run a recipe command; its ``results.json`` with the command, the machine and the load around it."""
    machine, load_before, t0 = machine_info(), load_average(), time.perf_counter()  # the commit it starts from
    subprocess.run(command, check=True, cwd=REPO_ROOT)
    results = json.loads((folder / "results.json").read_text())
    record = {"row": row, "seed": seed, "command": shlex.join(command[1:]), "wall_s": time.perf_counter() - t0,
              "load_before": load_before, "load_after": load_average(), "machine": machine,
              "warm_start_only": "--warm_start_only" in command, **results}
    write_json(folder / RECORD, record, indent=1)
    return record


# ----- statistics -------------------------------------------------------------------------------------------


def bootstrap_interval(values: np.ndarray, *, resamples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean of ``values`` (per-query scores), resampling queries."""
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def _entry(result: dict, row: str, fused: str | None) -> dict:
    """One run's per-query and mean MRR@10 of ``row`` and of its ``fused`` row, with where it ran."""
    per_query, machine = result["per_query_mrr@10"], result.get("machine", {})
    validation = result.get("validation_rows", {})  # absent in runs from before the recipe recorded it
    return {
        "alone": per_query[row], "fused": per_query.get(fused),
        "mrr": result["rows"][row]["mrr@10"], "fused_mrr": result["rows"].get(fused, {}).get("mrr@10"),
        "val_mrr": validation.get(row, {}).get("mrr@10"), "val_fused_mrr": validation.get(fused, {}).get("mrr@10"),
        "load": result.get("load_before"), "cpu": machine.get("cpu"), "gpu": machine.get("gpu"),
    }


def _shared_entries(result: dict) -> dict[str, dict]:
    """The shared rows an ``ours`` result gives: the first stage, and the warm-started base alone and fused. A
    ``--warm_start_only`` result (the warm start built again) gives them too; the first of those, seed 0's, was
    written before the warm-started base's fused row had its own name, and calls it plain ``fused``."""
    entries = {}
    first = next((row for row in result["rows"] if row.startswith("first stage")), None)  # "first stage (dense, ..."
    if first is not None:
        entries["first stage"] = _entry(result, first, None)
    if "warm-started base" in result["rows"]:
        fused = "warm-started base, fused"
        if fused not in result["rows"] and result.get("warm_start_only"):
            fused = "fused"
        entries["warm-started base"] = _entry(result, "warm-started base", fused)
    return entries


def collect(out: Path) -> dict[str, dict[int, dict]]:
    """``{row: {seed: {"alone": per-query, "fused": per-query, "mrr": ..., "fused_mrr": ...}}}`` of every
    finished run, with the shared rows taken from the ``ours`` runs."""
    found: dict[str, dict[int, dict]] = {}
    for name in ROWS:
        # a seed's own run before its rebuilt warm start (seedS-warm-start.json), which only stands in for
        # shared rows the run lacks
        paths = sorted((out / slug(name)).glob("seed*.json"), key=lambda p: (p.stem.endswith("-warm-start"), p.name))
        for path in paths:
            result = json.loads(path.read_text())
            seed = int(result["seed"])
            if name in WARM_START_ROWS:  # its own run, before a rebuild of it
                found.setdefault(name, {}).setdefault(seed, _entry(result, WARM_START, f"{WARM_START}, fused"))
            elif not result.get("warm_start_only"):
                found.setdefault(name, {})[seed] = _entry(result, "fine-tuned reranker", "fused")
            if name == OURS:
                for shared, entry in _shared_entries(result).items():
                    kept = found.setdefault(shared, {}).get(seed)
                    if kept is None or (kept["fused"] is None and entry["fused"] is not None):
                        found[shared][seed] = entry
    return found


def seed_average(runs: dict[int, dict], key: str, seeds: list[int]) -> dict[str, float] | None:
    per_seed = [runs[s][key] for s in seeds if runs[s].get(key)]
    if len(per_seed) != len(seeds):
        return None
    queries = sorted(per_seed[0])
    return {q: float(np.mean([p[q] for p in per_seed])) for q in queries}


def summarize(found: dict[str, dict[int, dict]]) -> list[dict]:
    """One line per row: seeds, mean MRR@10 alone and fused with 95% intervals, paired test against ours (a
    warm-start row: against the config's warm-started base)."""
    lines = []
    for name in [*SHARED_ROWS, *ROWS]:
        runs = found.get(name)
        if not runs:
            continue
        seeds = sorted(runs)
        line = {"row": name, "seeds": seeds, "cpu": sorted({str(r["cpu"]) for r in runs.values()}),
                "load": [runs[s]["load"] for s in seeds]}
        for key in ("val_mrr", "val_fused_mrr"):  # the validation queries': what settings are chosen on
            if all(runs[s].get(key) is not None for s in seeds):
                line[key] = float(np.mean([runs[s][key] for s in seeds]))
        for key, label in (("alone", "mrr"), ("fused", "fused_mrr")):
            averaged = seed_average(runs, key, seeds)
            if averaged is None:
                continue
            values = np.array(list(averaged.values()))
            line[label] = float(np.mean([runs[s][label] for s in seeds]))
            line[f"{label}_ci"] = bootstrap_interval(values)
            line[f"{label}_per_seed"] = [runs[s][label] for s in seeds]
            reference = WARM_START if name in WARM_START_ROWS else OURS
            test = compare(found.get(reference, {}), runs, key) if name != OURS else None
            if test is not None:
                ref = "warm_start" if reference == WARM_START else "ours"
                line[f"{label}_vs_{ref}"] = {f"{ref}_minus_row": test["a_minus_b"], "p_value": test["p_value"],
                                             "seeds": test["seeds"], "queries": test["queries"]}
        lines.append(line)
    return lines


def compare(a: dict[int, dict], b: dict[int, dict], key: str) -> dict | None:
    """The paired permutation test of row `a` against row `b` (their runs by seed) on per-query MRR@10 ``key``
    ('alone' or 'fused') averaged over the seeds both have; ``None`` without such seeds or queries."""
    from hn_trainer.evaluation.metrics import paired_test

    common = [s for s in sorted(b) if s in a]
    first = seed_average(a, key, common) if common else None
    second = seed_average(b, key, common) if common else None
    if not first or not second or set(first) != set(second):
        return None
    test = paired_test(first, second)
    return {"a_minus_b": test.mean_difference, "p_value": test.p_value, "seeds": common, "queries": test.n}


def format_report(lines: list[dict], out: Path) -> str:
    def cell(line, key):
        if key not in line:
            return "-"
        low, high = line[f"{key}_ci"]
        return f"{line[key]:.3f} [{low:.3f}, {high:.3f}]"

    def versus(line, key):
        ref = "warm_start" if f"{key}_vs_warm_start" in line else "ours"
        test = line.get(f"{key}_vs_{ref}")
        if not test:
            return "-"
        n = len(test["seeds"])
        return f"{test[f'{ref}_minus_row']:+.3f} (p = {test['p_value']:.3f}, {n} seed{'s' if n > 1 else ''})"

    def validation(line):
        values = [f"{line[key]:.3f}" if key in line else "-" for key in ("val_mrr", "val_fused_mrr")]
        return " / ".join(values)

    def table(rows, reference="ours"):
        head = [f"| row | seeds | validation MRR@10 alone / fused | MRR@10 alone [95% CI] | {reference} - row, alone "
                f"| MRR@10 fused [95% CI] | {reference} - row, fused |", "|---|---|---|---|---|---|---|"]
        return head + [f"| {line['row']} | {len(line['seeds'])} | {validation(line)} | {cell(line, 'mrr')} | "
                       f"{versus(line, 'mrr')} | {cell(line, 'fused_mrr')} | {versus(line, 'fused_mrr')} |"
                       for line in rows]

    ablations = [line for line in lines if line["row"] in ABLATIONS]
    warm_starts = [line for line in lines if line["row"] in WARM_START_ROWS]
    methods = [line for line in lines if line["row"] not in (*ABLATIONS, *WARM_START_ROWS)]
    ablation_part = ["## Ablations of ours (may have fewer seeds)", "", *table(ablations), ""] if ablations else []
    warm_start_part = ["## Other warm starts, against the config's (no label seen; may have fewer seeds)", "",
                       *table(warm_starts, WARM_START), ""] if warm_starts else []
    machines = sorted({c for line in lines for c in line["cpu"]})
    return "\n".join([
        "# Comparison rows with seeds (generated by `benchmarks/power.py --report`)", "",
        f"Each run is `hn-trainer train --config {DEFAULT_CONFIG.relative_to(REPO_ROOT)}` plus the row's flags "
        "and a seed; the command, machine and load of each run are in its JSON file beside this one. MRR@10 on "
        "the test queries, the mean over seeds; intervals: bootstrap over queries of the seed-averaged "
        "per-query MRR@10; `ours - row`: mean per-query difference and the permutation test's two-sided p-value "
        "on the seeds both rows have. Settings are compared on the validation column (training queries held out "
        "of training, the same per seed for every row), never on the test columns.", "",
        "## Ways of choosing negatives", "", *table(methods), "",
        *ablation_part, *warm_start_part, f"Machines: {', '.join(machines) or '-'}.", "",
    ])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", nargs="+", default=list(GROUPS["methods"]), choices=[*ROWS, *GROUPS],
                        metavar="ROW", help="Rows, or the groups 'methods' (the default), 'ablations' and "
                                            "'warm starts'.")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="Where finished runs and the report go.")
    parser.add_argument("--work", type=Path, default=REPO_ROOT / "runs" / "power", help="Run folders (models).")
    parser.add_argument("--report", action="store_true", help="Only rebuild the report from finished runs.")
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"),
                        help="Only print the paired test of row A against row B (either may be a shared row such "
                             "as 'first stage'), alone and fused, from finished runs.")
    args, extra = parser.parse_known_args(argv)
    if args.compare:
        found, (a, b) = collect(args.out), args.compare
        for name in (a, b):
            if name not in found:
                parser.error(f"--compare: no finished runs of {name!r} in {args.out} (rows: {', '.join(found)})")
        for key in ("alone", "fused"):
            test = compare(found[a], found[b], key)
            print(f"{a} - {b}, {key}: " + ("-" if test is None else
                  f"{test['a_minus_b']:+.3f} (p = {test['p_value']:.3f}, seeds {test['seeds']}, "
                  f"{test['queries']} queries)"))
        return 0
    if not args.report:
        rows = list(dict.fromkeys(r for name in args.rows for r in GROUPS.get(name, (name,))))
        for seed in args.seeds:
            for row in rows:
                run_one(row, seed, args.config, args.out, args.work, extra)
    lines = summarize(collect(args.out))
    write_json(args.out / "summary.json", lines, indent=1)
    report = format_report(lines, args.out)
    write_text(args.out / "README.md", report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
