"""What the benchmark scripts share: the project root on sys.path and writing a JSON result."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def write_result(path: Path, result: dict) -> dict:
    """Write the result as JSON (creating bench/out/) and print it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


def cpu_flags() -> dict:
    """The CPU model and the SIMD features that decide CPU speed (from /proc/cpuinfo)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    flags = set(re.search(r"^flags\s*:(.*)$", text, re.M).group(1).split())
    name = re.search(r"^model name\s*:\s*(.*)$", text, re.M)
    return {"model": name.group(1) if name else None,
            **{f: f in flags for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16")}}


def cpu_flag_names() -> list[str]:
    """The SIMD features of cpu_flags() this CPU has, by name."""
    return sorted(f for f, on in cpu_flags().items() if on is True)
