"""Device facts from NVML and torch: what a profile's numbers were measured on."""

from __future__ import annotations

import os
import platform
from typing import Any


def cuda_unavailable_reason() -> str | None:
    """None when a CUDA GPU and NVML are usable, else one line saying what is missing."""
    try:
        import torch
    except ImportError:
        return "torch is not installed (pip install 'moe-emu[calibrate]'); or use --device cpu"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible to torch; use --device cpu to run the pipeline on the CPU"
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as err:  # ImportError or any NVMLError
        return (f"NVML is not available ({type(err).__name__}: {err}); "
                "install nvidia-ml-py or use --device cpu")
    return None


def _nvml_handle(pynvml: Any, torch: Any, index: int) -> Any:
    """The NVML handle of torch's device `index` (matched by UUID: CUDA and NVML may order GPUs apart)."""
    uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
    if uuid is not None:
        for candidate in (f"GPU-{uuid}", str(uuid)):
            try:
                return pynvml.nvmlDeviceGetHandleByUUID(candidate)
            except Exception:
                continue
    return pynvml.nvmlDeviceGetHandleByIndex(index)


def _try(fn: Any, *args: Any) -> Any:
    """NVML queries that a virtualized GPU may not support come back as None, not as an error."""
    try:
        value = fn(*args)
    except Exception:
        return None
    return value.decode() if isinstance(value, bytes) else value


def clocks(index: int = 0) -> dict[str, Any]:
    """Clocks, temperature, power and PCIe link now (the link trains down when idle)."""
    import pynvml
    import torch

    pynvml.nvmlInit()
    h = _nvml_handle(pynvml, torch, index)
    return {
        "sm_clock_mhz": _try(pynvml.nvmlDeviceGetClockInfo, h, pynvml.NVML_CLOCK_SM),
        "mem_clock_mhz": _try(pynvml.nvmlDeviceGetClockInfo, h, pynvml.NVML_CLOCK_MEM),
        "temperature_c": _try(pynvml.nvmlDeviceGetTemperature, h, pynvml.NVML_TEMPERATURE_GPU),
        "power_w": (lambda mw: None if mw is None else mw / 1000.0)(_try(pynvml.nvmlDeviceGetPowerUsage, h)),
        "pcie_gen_current": _try(pynvml.nvmlDeviceGetCurrPcieLinkGeneration, h),
        "pcie_width_current": _try(pynvml.nvmlDeviceGetCurrPcieLinkWidth, h),
    }


def _host_cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_facts(device: str) -> dict[str, Any]:
    """Name, memory, link, driver and versions: the provenance of every figure."""
    import numpy
    import torch

    facts: dict[str, Any] = {
        "device": device,
        "host_cpu": _host_cpu(),
        "host_logical_cpus": os.cpu_count() or 0,
        "torch_cpu_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
    }
    if not device.startswith("cuda"):
        return facts
    import pynvml

    index = torch.device(device).index or 0
    props = torch.cuda.get_device_properties(index)
    facts.update({
        "torch_cuda": torch.version.cuda or "",
        "cudnn": str(torch.backends.cudnn.version() or ""),
        "gpu_name": props.name,
        "gpu_memory_bytes": int(props.total_memory),
        "multiprocessors": int(props.multi_processor_count),
        "compute_capability": f"{props.major}.{props.minor}",
    })
    l2 = getattr(props, "L2_cache_size", None)
    if l2:
        facts["l2_bytes"] = int(l2)
    pynvml.nvmlInit()
    h = _nvml_handle(pynvml, torch, index)
    cuda_driver = (_try(pynvml.nvmlSystemGetCudaDriverVersion_v2)
                   or _try(pynvml.nvmlSystemGetCudaDriverVersion))
    mem = _try(pynvml.nvmlDeviceGetMemoryInfo, h)
    nvml = {
        "nvml_name": _try(pynvml.nvmlDeviceGetName, h),
        "driver": _try(pynvml.nvmlSystemGetDriverVersion),
        "cuda_driver": None if cuda_driver is None else f"{cuda_driver // 1000}.{cuda_driver % 1000 // 10}",
        "nvml_memory_total_bytes": None if mem is None else int(mem.total),
        "pcie_gen_max": _try(pynvml.nvmlDeviceGetMaxPcieLinkGeneration, h),
        "pcie_gen_gpu_max": _try(pynvml.nvmlDeviceGetGpuMaxPcieLinkGeneration, h),
        "pcie_width_max": _try(pynvml.nvmlDeviceGetMaxPcieLinkWidth, h),
        "sm_clock_max_mhz": _try(pynvml.nvmlDeviceGetMaxClockInfo, h, pynvml.NVML_CLOCK_SM),
        "mem_clock_max_mhz": _try(pynvml.nvmlDeviceGetMaxClockInfo, h, pynvml.NVML_CLOCK_MEM),
        "power_limit_w": (lambda mw: None if mw is None else mw / 1000.0)(
            _try(pynvml.nvmlDeviceGetEnforcedPowerLimit, h)),
        "persistence_mode": _try(pynvml.nvmlDeviceGetPersistenceMode, h),
    }
    facts.update({k: v for k, v in nvml.items() if v is not None})
    return facts
