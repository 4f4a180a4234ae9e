"""What this machine is: the one place hwopt probes the host CPU, for the "auto" fields of a target
file (clock, cores, SIMD width, caches, LLVM CPU name), for hwopt's TVM backend (hwopt/tvm/target.py:
the host's LLVM CPU name and physical cores come from here) and for the provenance of a calibration
(`cpu_id`: which CPU a table was measured on, so a table from another CPU is detected).
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


def physical_cores() -> int:
    """Physical cores of the machine (TVM's thread pool and MetaSchedule's builders use one per core)."""
    try:
        import psutil

        n = psutil.cpu_count(logical=False)
        if n:
            return int(n)
    except Exception:  # pragma: no cover - psutil missing/broken
        pass
    return os.cpu_count() or 1


def llvm_cpu() -> str:
    """LLVM's name for this CPU (e.g. ``znver3``, ``skylake-avx512``); "generic" without TVM/LLVM."""
    try:
        import tvm  # noqa: F401  (slow import: only when a TVM target is asked for)
        from tvm.target import codegen
        return str(codegen.llvm_get_system_cpu())
    except Exception:  # pragma: no cover - no TVM / no LLVM
        return "generic"


def cpu_id() -> str:
    """Which CPU this is, as a calibration records it (`[calibration.<runtime>] cpu`): vendor, family,
    model and model name from /proc/cpuinfo (x86: "AuthenticAMD family 25 model 1: AMD EPYC"; Arm:
    "implementer 0x41 part 0xd08"), without the clock or the core count. Cheap (no TVM import), so
    loading a target can compare it with the CPU a table was measured on: two CPUs with one model name
    ("AMD EPYC": Zen 3 and Zen 4 alike) differ in family / model, and their kernels' speeds differ."""
    info = cpuinfo()

    def field(name: str) -> str:
        m = re.search(rf"^{name}\s*:\s*(.*)$", info, re.M)
        return m.group(1).strip() if m else ""

    if field("vendor_id"):
        out = f"{field('vendor_id')} family {field('cpu family')} model {field('model')}"
        return out + (f": {field('model name')}" if field("model name") else "")
    if field("CPU implementer"):
        return f"implementer {field('CPU implementer')} part {field('CPU part')}"
    import platform
    return platform.processor() or platform.machine() or "unknown"
