"""What this machine is: the one place hwopt probes the host CPU (clock, cores, SIMD width, caches,
LLVM CPU name) for the "auto" fields of a target file. hwopt's TVM backend asks two of the same
questions (host CPU name, physical cores) in hwopt/tvm/target.py; they belong here.
"""
from __future__ import annotations

import os
import re
from pathlib import Path


def cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def clock_mhz() -> float:
    for p in ("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq",):
        try:
            return int(Path(p).read_text()) / 1000.0
        except (OSError, ValueError):
            pass
    mhz = [float(m) for m in re.findall(r"cpu MHz\s*:\s*([\d.]+)", cpuinfo())]
    return max(mhz) if mhz else 2000.0


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def simd_bits() -> int:
    m = re.search(r"^(flags|Features)\s*:(.*)$", cpuinfo(), re.M)
    flags = set(m.group(2).split()) if m else set()
    if "avx512f" in flags:
        return 512
    if "avx2" in flags or "avx" in flags:
        return 256
    if flags & {"sse2", "asimd", "neon"}:
        return 128
    return 128


def cache_kib(level: int) -> float:
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    for idx in sorted(base.glob("index*")) if base.exists() else []:
        try:
            if int((idx / "level").read_text()) == level and (idx / "type").read_text().strip() in ("Data", "Unified"):
                s = (idx / "size").read_text().strip()
                return float(s[:-1]) * (1024 if s.endswith("M") else 1) if s[-1] in "KM" else float(s) / 1024
        except (OSError, ValueError):
            continue
    return 0.0


def llvm_cpu() -> str:
    try:
        import tvm  # noqa: F401  (slow import: only when a TVM target is asked for)
        from tvm.target import codegen
        return str(codegen.llvm_get_system_cpu())
    except Exception:  # pragma: no cover - no TVM / no LLVM
        return "generic"
