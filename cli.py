"""The command-line plumbing every script shares: logging, range-checked option types, the common
argument group (--data-dir, --seed, --overwrite, --quiet, --log-level, --version), old spellings,
the overwrite policy, and run_cli (a UserError becomes one line on stderr and exit status 2).

Example:
    python -c "import cli; print(cli.int_range(1)('3'))"
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable

from paths import DEFAULT_BASE_MODEL, DEFAULT_CHECKPOINT_DIR, DEFAULT_DATA_DIR
from utils import UserError, log


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
SUITE_VERSION = "0.7.0"
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


