"""Phase 8: interactive terminal demo: trained two-tower search side by side with the baseline and,
with --hybrid, the trained model fused with BM25 (what a user would serve next to their lexical engine).

Reads: --checkpoint (default checkpoints/best_model.pt) + data/indices, the baseline model +
data/indices_baseline, with --hybrid data/indices_bm25 (and the dense weight the evaluation chose
on the validation queries, from data/eval/report.json, unless --hybrid-weight is given),
data/products_clean.parquet (titles), data/ground_truth.parquet (ESCI labels shown wherever a
query-product pair was judged). Writes nothing but ~/.ttsn_demo_history.

Interactive: type a query; commands :k N, :hnsw, :flat, :embed, :help, :quit (Ctrl-D/Ctrl-C exit).
Scripts:  --query "..." (repeatable) prints results and exits; queries piped on stdin are answered
one per line; --json prints one JSON object per query.

Example (after the workflow):
    python demo_trained_model.py --query "bathroom fan without light"
    python demo_trained_model.py --hybrid --no-baseline --query "3/4 pex elbow"
    echo "aa batteries 24 pack" | python demo_trained_model.py --json
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from lexical import Bm25Index
from retrieval import Bm25Searcher, DenseSearcher, HybridSearcher
from two_tower_model import TwoTowerModel
from cli import add_alias, add_common_args, add_comparison_args, float_range, int_range, run_cli
from fileio import load_catalog, load_prepared, read_json
from paths import bm25_index_dir, eval_dir, index_dir
from utils import UserError, clean_text, get_device, log

MAX_QUERY_CHARS = 500
HELP = """commands:
  :k N       show the top N (1-100)          :flat / :hnsw   switch the index
  :embed     the last query's embeddings     :help           this text
  :quit      exit (also Ctrl-D / Ctrl-C)"""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_comparison_args(p)
    p.add_argument("--no-baseline", action="store_true", help="show the trained system only")
    p.add_argument("--query", action="append", default=None, help="answer this query and exit (repeatable)")
    p.add_argument("--json", action="store_true", help="machine-readable output, one JSON object per query")
    p.add_argument("--top-k", type=int_range(1, 100), default=10, help="results shown per query")
    add_alias(p, "--k", "--top-k")
    p.add_argument("--index", choices=["flat", "hnsw"], default="flat")
    p.add_argument("--hybrid", action="store_true", help="also show the trained model fused with BM25")
    p.add_argument("--hybrid-weight", type=float_range(0.0, 1.0), default=None, metavar="W",
                   help="dense weight of the fusion (default: the one data/eval/report.json records, chosen on the "
                        "validation queries; 0.5 without a report)")
    p.add_argument("--bm25-index-dir", type=Path, default=None, help="default: DATA_DIR/indices_bm25")
    add_common_args(p, seed=False)
    return p.parse_args(argv)


class Demo:
    def __init__(self, args: argparse.Namespace):
        t0 = time.perf_counter()
        d = args.data_dir
        dev = get_device(args.device)
        prod = load_catalog(d, ("product_id", "product_title", "product_text"))
        self.titles = dict(zip(prod["product_id"], prod["product_title"].fillna(prod["product_text"])))
        gt_path = d / "ground_truth.parquet"
        self.labels: dict[str, dict[str, str]] = {}
        if gt_path.is_file():
            gt = load_prepared(d, "ground_truth", ["query", "product_id", "esci_label"])
            for q, g in gt.groupby(gt["query"].str.lower().str.strip()):
                self.labels[q] = dict(zip(g["product_id"], g["esci_label"]))
        trained = TwoTowerModel.from_pretrained(args.checkpoint).to(dev)
        self.systems = [DenseSearcher("trained", trained, args.index_dir or index_dir(d), prod)]
        if not args.no_baseline:
            base = TwoTowerModel.from_pretrained(args.base_model).to(dev)
            self.systems.append(DenseSearcher("baseline", base, args.baseline_index_dir or index_dir(d, True), prod))
        self.hybrid_weight = None
        if args.hybrid:
            bm25 = Bm25Index.load(args.bm25_index_dir or bm25_index_dir(d), prod)
            self.hybrid_weight = hybrid_weight(args)
            self.systems.append(HybridSearcher(self.systems[0], Bm25Searcher(bm25), self.hybrid_weight))
        self.k, self.kind, self.json = args.top_k, args.index, args.json
        self.last: dict | None = None
        self.startup_s = time.perf_counter() - t0
        for s in self.systems:  # warm-up: the first query is as fast as the rest
            s.search("warm up", 1, self.kind)

    # -- answering --------------------------------------------------------------------------------
    def answer(self, raw: str) -> dict | None:
        query = clean_text(raw)
        if not query:
            self.say("empty query: type some words, or :help")
            return None
        note = None
        if len(query) > MAX_QUERY_CHARS:
            query, note = query[:MAX_QUERY_CHARS], f"query cut to {MAX_QUERY_CHARS} characters"
        t = time.perf_counter()
        judged = self.labels.get(query.lower(), {})
        res = {"query": query, "k": self.k, "index": self.kind, "systems": {}}
        if self.hybrid_weight is not None:
            res["hybrid_weight"] = self.hybrid_weight
        embs = {}
        for s in self.systems:
            ids, scores = s.search(query, self.k, self.kind)
            if isinstance(s, DenseSearcher):
                embs[s.name] = s.last_embedding
            res["systems"][s.name] = [{"rank": i + 1, "score": round(float(sc), 4), "product_id": pid,
                                       "title": self.titles.get(pid, ""), "esci_label": judged.get(pid)}
                                      for i, (pid, sc) in enumerate(zip(ids, scores))]
        res["ms"] = round(1000 * (time.perf_counter() - t), 1)
        if note:
            res["note"] = note
        if "baseline" in res["systems"]:
            a = {r["product_id"] for r in res["systems"]["trained"]}
            b = {r["product_id"] for r in res["systems"]["baseline"]}
            res["overlap"] = len(a & b)
        self.last = {"result": res, "embeddings": embs}
        if self.json:
            print(json.dumps(res, ensure_ascii=False), flush=True)
        else:
            self.print_table(res)
        return res

    def print_table(self, res: dict) -> None:
        width = shutil.get_terminal_size((120, 20)).columns
        names = list(res["systems"])
        col = max(30, (width - 3 * (len(names) - 1)) // len(names))
        print(f"\nquery: {res['query']!r}   top {res['k']} ({res['index']}, {res['ms']} ms)"
              + (f"   [{res['note']}]" if res.get("note") else ""))
        print(" | ".join(f"{n:<{col}}"[:col] for n in names))
        print("-+-".join("-" * col for _ in names))
        other = {n: {r["product_id"] for m in names if m != n for r in res["systems"][m]} for n in names}
        for i in range(res["k"]):
            cells = []
            for n in names:
                rows = res["systems"][n]
                if i >= len(rows):
                    cells.append(" " * col)
                    continue
                r = rows[i]
                mark = "*" if len(names) > 1 and r["product_id"] not in other[n] else " "
                head = f"{r['rank']:>2}{mark}{r['score']:.3f} {r['esci_label'] or '-'} "
                cells.append((head + r["title"])[:col].ljust(col))
            print(" | ".join(cells))
        if "overlap" in res:
            print(f"(* = in no other list; trained and baseline share {res['overlap']} of {res['k']}; "
                  f"labels: E/S/C/I where judged, - unjudged"
                  + (f"; hybrid dense weight {res['hybrid_weight']:.2f})" if "hybrid_weight" in res else ")"))

    def show_embedding(self) -> None:
        if not self.last:
            self.say("no query yet")
            return
        for s in self.systems:
            if s.name not in self.last["embeddings"]:
                continue
            e = self.last["embeddings"][s.name]
            top = self.last["result"]["systems"][s.name]
            cos = top[0]["score"] if top else float("nan")
            print(f"{s.name:>8}: dim {len(e)}, norm {np.linalg.norm(e):.4f}, first dims "
                  f"{np.array2string(e[:6], precision=3, suppress_small=True)}, cosine to top-1 {cos:.4f}")

    def command(self, line: str) -> bool:
        """Handle a ':' command; False means quit."""
        cmd, *rest = line[1:].split()
        if cmd in ("q", "quit", "exit"):
            return False
        if cmd == "k" and rest and rest[0].isdigit() and 1 <= int(rest[0]) <= 100:
            self.k = int(rest[0])
            self.say(f"showing the top {self.k}")
        elif cmd in ("hnsw", "flat"):
            if cmd == "hnsw" and any("hnsw" not in s.indices for s in self.systems if isinstance(s, DenseSearcher)):
                self.say("no HNSW index built (reindex_with_trained_model.py builds it); staying on flat")
            else:
                self.kind = cmd
                self.say(f"searching the {cmd} index")
        elif cmd == "embed":
            self.show_embedding()
        elif cmd == "help":
            print(HELP)
        else:
            self.say(f"unknown command {line!r}; :help lists the commands")
        return True

    def say(self, msg: str) -> None:
        print(msg, file=sys.stderr if self.json else sys.stdout, flush=True)

    def loop(self, lines=None) -> None:
        interactive = lines is None
        if interactive:
            _enable_history()
            print(f"ready in {self.startup_s:.1f}s. Type a query, :help for commands, Ctrl-D to quit.")
        while True:
            try:
                line = input("search> ") if interactive else next(lines)
            except (EOFError, StopIteration):
                break
            except KeyboardInterrupt:
                print()
                break
            except UnicodeDecodeError as e:
                if not interactive:
                    raise
                print(f"that line is not valid UTF-8 ({e.reason}); type it again", file=sys.stderr)
                continue
            line = line.strip()
            if line.startswith(":") and len(line) > 1:
                if not self.command(line):
                    break
            else:
                self.answer(line)


def hybrid_weight(args: argparse.Namespace) -> float:
    """--hybrid-weight, else the trained system's weight chosen on val by the last evaluation, else 0.5."""
    if args.hybrid_weight is not None:
        return args.hybrid_weight
    report = eval_dir(args.data_dir) / "report.json"
    try:
        w = read_json(report)["hybrid"]["weights"]["trained"]
        log.info("hybrid dense weight %.2f (chosen on the validation queries, %s)", w, report)
        return float(w)
    except (OSError, ValueError, KeyError, TypeError):
        log.warning("no hybrid weight in %s (run evaluate_trained_model.py); fusing with dense weight 0.5", report)
        return 0.5


def _enable_history() -> None:
    try:
        import atexit
        import readline
        hist = Path.home() / ".ttsn_demo_history"
        if hist.is_file():
            readline.read_history_file(hist)
        readline.set_history_length(1000)
        atexit.register(readline.write_history_file, hist)
    except (ImportError, OSError):
        pass


def stdin_lines(stream):
    """Lines of a piped byte stream as text; invalid UTF-8 is one clear error naming the line."""
    for n, raw in enumerate(iter(stream.readline, b""), 1):
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise UserError(f"stdin line {n} is not valid UTF-8 (byte 0x{raw[e.start]:02x} at position {e.start}); "
                            f"convert the input first, e.g. iconv -f latin1 -t utf-8") from None


def main(args: argparse.Namespace) -> Demo:
    demo = Demo(args)
    log.info("loaded %s in %.1fs", " + ".join(s.name for s in demo.systems), demo.startup_s)
    if args.query:
        for q in args.query:
            demo.answer(q)
    elif not sys.stdin.isatty():
        demo.loop(stdin_lines(sys.stdin.buffer))
    else:
        demo.loop()
    return demo


if __name__ == "__main__":
    raise SystemExit(run_cli(main, parse_args()))
