"""What every speed figure depends on: the CPU (its instruction sets) or the GPU, and the software."""
from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

ISA = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "amx_tile")


def machine() -> dict:
    """The CPU, its instruction sets, the GPU where there is one, the versions."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    # platform.processor() only where /proc says nothing: it forks `uname`, which crashed a process
    # holding OpenVINO's and OpenMP's threads here (SIGSEGV while reading the child's output).
    cpu = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), None) \
        or platform.processor()
    flags = set(next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags")), []))
    versions = {}
    for name in ("openvino", "nncf"):
        try:
            versions[name] = __import__(name).__version__.split("-")[0]
        except ImportError:
            versions[name] = None
    return {"cpu": cpu, "cores": torch.get_num_threads(), "isa": {f: f in flags for f in ISA},
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"), "torch": torch.__version__,
            **versions, "python": platform.python_version()}


def describe_machine(m: dict) -> str:
    """One line: 'AMD EPYC … (2 cores; avx2 avx512f …)' or the GPU."""
    isa = " ".join(f for f, present in m["isa"].items() if present) or "no AVX2"
    return (f"{m['gpu']} (GPU)" if m.get("gpu") else f"{m['cpu']} ({m['cores']} cores; {isa})")
