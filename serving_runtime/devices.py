"""GPU detection for ``instance_group`` placement.

The count comes from NVML (``nvidia-ml-py``, in the ``serve`` extra), limited by
``CUDA_VISIBLE_DEVICES`` the way CUDA applies it. Nothing is probed at import time; the first
call probes once and caches the answer (GPUs do not come and go under a running server).
"""

from __future__ import annotations

import functools
import os


def _visible_limit() -> int | None:
    """How many GPUs ``CUDA_VISIBLE_DEVICES`` allows, or None when it is not set."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    entries = [entry.strip() for entry in value.split(",") if entry.strip()]
    count = 0
    for entry in entries:
        # CUDA stops at the first invalid ordinal ("-1" is the usual way to hide every GPU).
        if entry.lstrip("-").isdigit() and int(entry) < 0:
            break
        count += 1
    return count


def _nvml_count() -> int:
    try:
        import pynvml
    except ImportError:
        return 0
    try:
        pynvml.nvmlInit()
    except Exception:  # no driver, no library: no GPU
        return 0
    try:
        return int(pynvml.nvmlDeviceGetCount())
    except Exception:
        return 0
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


@functools.cache
def gpu_count() -> int:
    """Number of CUDA GPUs this process may use (0 when there is no driver or NVML)."""
    count = _nvml_count()
    limit = _visible_limit()
    return count if limit is None else min(count, limit)


def has_gpu() -> bool:
    """True when at least one CUDA GPU is usable."""
    return gpu_count() > 0
