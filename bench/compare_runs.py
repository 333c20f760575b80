"""Experiment tool: one system of two evaluation reports, compared query by query.

Two runs of the workflow that differ in one thing (a flag, a default, a commit) each leave an
evaluation directory (evaluate_trained_model.py's --out-dir, by default DATA_DIR/eval) with TREC
run files and the qrels they were scored on. This reads the same system's run file from both with
the report's own readers (evaluate_trained_model.read_trec_run / read_trec_qrels), scores it with
the project's metric code (metrics.evaluate_run: relevant = E by default, ESCI gains for NDCG) and
prints each side's means and the paired-bootstrap 95% CI of B - A, the way
the closing notes and docs/experiments.md report a change. With --slots K it also says what each
side's top K holds: how many of a query's first K results are its judged E, S, C, I products and
how many are unjudged, on average over the scored queries (does a change put E products in the
slots S products held, or in slots unjudged products held?). Both directories must hold the same
qrels (the same test queries and judgements), or the comparison would not be paired.

Reads: A/<system>.run, B/<system>.run, A/qrels.txt, B/qrels.txt.
Writes: stdout; --out FILE.json with the figures.

Example (seconds):
    python bench/compare_runs.py W_old/data/eval W_new/data/eval                      # trained
    python bench/compare_runs.py W_old/data/eval W_new/data/eval --system "hybrid(trained+bm25)"
    python bench/compare_runs.py W_old/data/eval W_new/data/eval --slots 10           # + what the top 10 holds
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import ROOT  # noqa: F401,E402  (puts the project on sys.path)

from cli import add_version_arg, run_cli  # noqa: E402
from evaluate_trained_model import read_trec_qrels, read_trec_run, run_file  # noqa: E402
from metrics import evaluate_run, paired_bootstrap_ci  # noqa: E402
from paths import ESCI_GAINS, ESCI_LABELS  # noqa: E402
from utils import UserError  # noqa: E402

METRICS = ("recall@10", "ndcg@10", "mrr")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_version_arg(p)
    p.add_argument("a", type=Path, help="evaluation directory of the reference run (A)")
    p.add_argument("b", type=Path, help="evaluation directory of the changed run (B)")
    p.add_argument("--system", default="trained", help="system whose run file is compared (default: trained)")
    p.add_argument("--relevant", default="E", choices=["E", "ES"], help="labels that count as relevant")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples")
    p.add_argument("--slots", type=int, default=0, metavar="K",
                   help="also print what each side's top K holds (judged E/S/C/I, unjudged); 0 = off")
    p.add_argument("--out", type=Path, default=None, help="also write the figures as JSON")
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def compare(run_a: dict, run_b: dict, qrels: dict, relevant=("E",), n_boot: int = 2000) -> dict:
    """Means of A and B over the queries with a relevant item, and B - A with its paired 95% CI."""
    ma, pa = evaluate_run(run_a, qrels, relevant, ESCI_GAINS)
    mb, pb = evaluate_run(run_b, qrels, relevant, ESCI_GAINS)
    out = {"queries": ma["queries"], "a": {m: ma[m] for m in METRICS}, "b": {m: mb[m] for m in METRICS}, "delta": {}}
    for m in METRICS:
        lo, hi = paired_bootstrap_ci(pa[m], pb[m], n_boot)
        out["delta"][m] = {"gain": mb[m] - ma[m], "ci95": [lo, hi]}
    return out


def top_slots(run: dict, qrels: dict, k: int, relevant=("E",)) -> dict[str, float]:
    """Mean count, over the queries with a relevant item, of the top-k slots that hold the query's
    judged E, S, C and I products and unjudged ones ("U"); the five add up to k where a run
    ranks at least k items for each query (a query the run misses counts 0 slots)."""
    scored = [q for q, j in qrels.items() if any(lab in relevant for lab in j.values())]
    out = {lab: 0.0 for lab in (*ESCI_LABELS, "U")}
    for q in scored:
        judged = qrels[q]
        for item in run.get(q, [])[:k]:
            out[judged.get(item, "U")] += 1
    return {lab: n / max(1, len(scored)) for lab, n in out.items()}


def main(args: argparse.Namespace) -> dict:
    name = run_file(args.system)
    qa, qb = read_trec_qrels(args.a / "qrels.txt"), read_trec_qrels(args.b / "qrels.txt")
    if qa != qb:
        raise UserError(f"{args.a / 'qrels.txt'} and {args.b / 'qrels.txt'} differ: the two runs were not scored "
                        "on the same test queries, so they cannot be compared query by query")
    run_a, run_b = read_trec_run(args.a / name), read_trec_run(args.b / name)
    res = compare(run_a, run_b, qa, tuple(args.relevant), args.bootstrap)
    res.update(system=args.system, a=str(args.a), b=str(args.b), a_metrics=res.pop("a"), b_metrics=res.pop("b"))
    print(f"{args.system} on {res['queries']} queries with a relevant item (relevant = {args.relevant})")
    print("| metric | A | B | B − A [95% CI] |\n| --- | ---: | ---: | ---: |")
    for m in METRICS:
        d = res["delta"][m]
        print(f"| {m} | {res['a_metrics'][m]:.4f} | {res['b_metrics'][m]:.4f} | "
              f"{d['gain']:+.4f} [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}] |")
    if args.slots > 0:
        res["slots"] = {"k": args.slots, "a": top_slots(run_a, qa, args.slots, tuple(args.relevant)),
                        "b": top_slots(run_b, qa, args.slots, tuple(args.relevant))}
        cols = list(res["slots"]["a"])  # top_slots' order: ESCI_LABELS, then U
        print(f"\nWhat the top {args.slots} holds, slots per query: the query's judged "
              f"{'/'.join(ESCI_LABELS)} products, U = unjudged")
        print("| run | " + " | ".join(cols) + " |\n| --- |" + " ---: |" * len(cols))
        for side in ("a", "b"):
            print(f"| {side.upper()} | " + " | ".join(f"{n:.3f}" for n in res["slots"][side].values()) + " |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2) + "\n")
    return res


if __name__ == "__main__":
    raise SystemExit(run_cli(main, parse_args()))
