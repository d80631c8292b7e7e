"""Machine readouts for the header and the memory meter: NVML when present, psutil always."""
from __future__ import annotations

import functools
import os

import psutil


@functools.lru_cache(maxsize=1)
def _nvml():
    """The NVML module, initialised, or None (no nvidia-ml-py, no driver, no GPU)."""
    try:
        import pynvml  # provided by the optional nvidia-ml-py package

        pynvml.nvmlInit()
        if pynvml.nvmlDeviceGetCount() < 1:
            return None
        return pynvml
    except Exception:  # noqa: BLE001 - any NVML failure simply means "no NVML readout"
        return None


def device_label() -> str:
    """'GPU: <name> (cuda X.Y)' or 'CPU: N cores', for the header (imports torch: run off-thread)."""
    try:
        import torch

        if torch.cuda.is_available():
            name = torch.cuda.get_device_name(0)
            count = torch.cuda.device_count()
            more = f" x{count}" if count > 1 else ""
            return f"GPU: {name}{more} (cuda {torch.version.cuda})"
    except Exception:  # noqa: BLE001 - a broken CUDA install still leaves the CPU
        pass
    return f"CPU: {os.cpu_count()} cores"


def sample(pids: list[int] | None = None) -> dict:
    """GPU utilisation and memory (device 0) from NVML, and resident memory of the given processes."""
    out: dict = {"gpu_util": None, "gpu_mem_used": None, "gpu_mem_total": None, "ram_rss": None, "ram_total": None}
    nv = _nvml()
    sources = []
    if nv is not None:
        try:
            handle = nv.nvmlDeviceGetHandleByIndex(0)
            out["gpu_util"] = float(nv.nvmlDeviceGetUtilizationRates(handle).gpu)
            mem = nv.nvmlDeviceGetMemoryInfo(handle)
            out["gpu_mem_used"], out["gpu_mem_total"] = float(mem.used), float(mem.total)
            sources.append("NVML")
        except Exception:  # noqa: BLE001
            pass
    rss = 0.0
    for pid in pids or [os.getpid()]:
        try:
            rss += psutil.Process(pid).memory_info().rss
        except psutil.Error:
            continue
    out["ram_rss"] = rss or None
    out["ram_total"] = float(psutil.virtual_memory().total)
    sources.append("psutil")
    out["source"] = ", ".join(sources)
    return out
