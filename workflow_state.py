"""Step records of run_workflow.sh: which steps are up to date, which must run, and why.

A step is up to date when its output exists and the record of its last finished run holds the same
key: the step's options (the command words that shape it) and the identity of each input file
(resolved path, size, modification time in ns). Changing an option, pointing at another raw
directory or replacing a file therefore redoes the step, and every step downstream of it (their
inputs are its outputs). A step that started but did not finish with the same key is "resume":
run_workflow.sh resumes an interrupted training stage, and only then. An output that lists
files with their checksums (evaluate's report.json) is up to date only while they are all intact.

Reads/writes: STATE_DIR/<step>.json ({"status": "started"|"done", "key", "options", "inputs"}).

    python workflow_state.py check --options="..." [--force REASON] [--pending FILE ...]
                                   STATE_DIR STEP OUTPUT INPUT...    -> prints "run|resume|skip<TAB>why"
    python workflow_state.py start --options="..." STATE_DIR STEP INPUT...
    python workflow_state.py done  STATE_DIR STEP
    python workflow_state.py sample RAW_DIR SIZE SEED     -> prints "ours|other|foreign|absent<TAB>why"
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

from cli import add_version_arg
from fileio import file_sha256, read_json, write_json


def file_identity(path: str | os.PathLike) -> list:
    """[resolved path, size, mtime_ns] of a file, or [path, None, None] when it does not exist."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError:
        return [str(p.absolute()), None, None]
    return [str(p.resolve()), st.st_size, st.st_mtime_ns]


def step_record(options: str, inputs: list[str]) -> dict:
    """The record of a step with these options and inputs; its key changes when either does."""
    ids = [file_identity(f) for f in inputs]
    key = hashlib.sha256(json.dumps([options, ids]).encode()).hexdigest()[:16]
    return {"key": key, "options": options, "inputs": ids}


def _read(state_dir: Path, step: str) -> dict:
    try:
        rec = read_json(state_dir / f"{step}.json")
    except (OSError, ValueError):
        return {}
    return rec if isinstance(rec, dict) else {}


def _options_diff(old: str, new: str) -> str:
    a, b = old.split(), new.split()
    gone = [w for w in a if w not in b]
    added = [w for w in b if w not in a]
    text = " ".join([f"-{w}" for w in gone] + [f"+{w}" for w in added])
    return text[:160] + ("..." if len(text) > 160 else "")


def decide(state_dir: Path, step: str, output: str, options: str, inputs: list[str],
           force: str | None = None, pending: tuple[str, ...] = ()) -> tuple[str, str]:
    """("run" | "resume" | "skip", why) for a step; `pending` are files a step before it will rewrite."""
    now, old = step_record(options, inputs), _read(state_dir, step)
    if force:
        return "run", force
    rebuilt = [f for f in inputs if f in pending]
    if rebuilt:
        return "run", f"its input {rebuilt[0]} is rebuilt by an earlier step"
    if old.get("status") == "started" and old.get("key") == now["key"]:
        return "resume", "an earlier run with the same inputs and options was interrupted"
    if not old:
        return "run", "no record of a finished run" if Path(output).exists() else "not done yet"
    if not Path(output).exists():
        return "run", f"its output {output} is missing"
    broken = incomplete_files(Path(output))
    if broken:
        return "run", f"{broken[0]}, listed in {output}, is missing or changed"
    if old.get("options") != options:
        return "run", f"options changed ({_options_diff(old.get('options', ''), options)})"
    for was, cur in zip(old.get("inputs", []), now["inputs"]):
        if was != cur:
            what = "moved" if was[0] != cur[0] else ("missing" if cur[1] is None else "changed")
            return "run", f"input {cur[0]} {what} since the last run"
    if old.get("key") != now["key"]:  # e.g. an input added to or removed from the step
        return "run", "its inputs changed"
    if old.get("status") != "done":
        return "run", "the last run did not finish"
    return "skip", "up to date"


def incomplete_files(output: Path) -> list[str]:
    """Files that a JSON output lists under "files" ({name: sha256}, e.g. evaluate's report.json)
    and that are missing or differ; [] for any other output."""
    if output.suffix != ".json":
        return []
    try:
        files = read_json(output).get("files")
    except (OSError, ValueError, AttributeError):
        return []
    if not isinstance(files, dict):
        return []
    bad = []
    for name, digest in files.items():
        f = output.parent / name
        if not f.is_file() or file_sha256(f) != digest:
            bad.append(str(f))
    return bad


def start(state_dir: Path, step: str, options: str, inputs: list[str]) -> None:
    """Record that a step starts with these options and inputs (the record of a run not yet finished)."""
    write_json(state_dir / f"{step}.json", {"status": "started", **step_record(options, inputs)})


def done(state_dir: Path, step: str) -> None:
    """Mark the started record finished: the identities are those the step started from."""
    rec = _read(state_dir, step)
    if rec:
        write_json(state_dir / f"{step}.json", {**rec, "status": "done"})


def sample_origin(raw_dir: Path, size: str, seed: int) -> tuple[str, str]:
    """Is RAW_DIR the built-in sample with these settings ("ours"), another sample ("other"), files
    that no sample step made ("foreign"), or empty ("absent")?"""
    ex = raw_dir / "shopping_queries_dataset_examples.parquet"
    meta = raw_dir / "sample_catalog.json"
    if not ex.exists():
        return "absent", f"{raw_dir} has no sample yet"
    if not meta.is_file():
        return "foreign", (f"{raw_dir} holds ESCI files that the sample step did not make; to train on them "
                           f"pass --raw-dir {raw_dir}, or move them away to build the sample there")
    m = _read(raw_dir, "sample_catalog")
    if m.get("size") == size and m.get("seed") == seed:
        return "ours", f"sample {size} (seed {seed})"
    return "other", f"{raw_dir} holds the {m.get('size')} sample (seed {m.get('seed')}), not {size} (seed {seed})"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_version_arg(p)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check")
    c.add_argument("state_dir", type=Path)
    c.add_argument("step")
    c.add_argument("output")
    c.add_argument("--options", default="")
    c.add_argument("--force", default=None)
    c.add_argument("--pending", action="append", default=[])
    c.add_argument("inputs", nargs="*")
    s = sub.add_parser("start")
    s.add_argument("state_dir", type=Path)
    s.add_argument("step")
    s.add_argument("--options", default="")
    s.add_argument("inputs", nargs="*")
    d = sub.add_parser("done")
    d.add_argument("state_dir", type=Path)
    d.add_argument("step")
    o = sub.add_parser("sample")
    o.add_argument("raw_dir", type=Path)
    o.add_argument("size")
    o.add_argument("seed", type=int)
    return p.parse_args(argv)


def main(a: argparse.Namespace) -> int:
    """Print the verdict (check, sample) or write the record (start, done) of one step."""
    if a.cmd == "check":
        verdict, why = decide(a.state_dir, a.step, a.output, a.options, a.inputs, a.force, tuple(a.pending))
        print(f"{verdict}\t{why}")
    elif a.cmd == "start":
        start(a.state_dir, a.step, a.options, a.inputs)
    elif a.cmd == "done":
        done(a.state_dir, a.step)
    else:
        print("\t".join(sample_origin(a.raw_dir, a.size, a.seed)))
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
