"""One header line naming the machine a benchmark ran on: CPU model, the ISA extensions that
decide matmul speed, cores, and load. BENCHMARKS.md keeps one section per machine type, so every
benchmark prints this first."""

from __future__ import annotations

import os
import platform

#: extensions that change which matmul kernels run (bf16 natively or emulated, AMX tiles)
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "avx_ne_convert")


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or the platform's processor string."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_isa() -> list[str]:
    """Which of :data:`ISA_FLAGS` this CPU has (empty off Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return [x for x in ISA_FLAGS if x in have]
    except OSError:
        pass
    return []


def machine_line() -> str:
    """``machine: <model>; ISA <flags>; <n> CPUs; load average <1 min>``."""
    isa = cpu_isa()
    native_bf16 = "native bf16" if {"avx512_bf16", "amx_bf16"} & set(isa) else "bf16 emulated"
    return (f"machine: {cpu_model()}; ISA {' '.join(isa) or 'unknown'} ({native_bf16}); "
            f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    print(machine_line())
