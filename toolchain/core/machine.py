"""The machine a measurement ran on, recorded beside every timing (verify, fit-latency, menu)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def machine_info(threads: int | None) -> dict:
    """CPU model, the instruction-set flags that matter for INT8, and the threads used."""
    model, flags = platform.processor() or "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("unknown", "", platform.processor()):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    wanted = ["avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8", "avx_vnni"]
    return {"cpu": model, "cores": os.cpu_count(), "threads": threads or os.cpu_count(),
            "flags": [f for f in wanted if f in flags]}
