"""TVM targets: target specs in TVM 0.27's JSON-dict form (the host's resolved from hwopt.targets.probe, the one
place hwopt probes the host CPU), what a target can do here (run, cross-compile, bare metal), and its cross compiler."""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
from typing import Any

import tvm

from ..errors import HwoptError
from ..targets import probe

class CompileError(HwoptError, RuntimeError):
    """A TVM compilation step failed.

    ``stage`` is one of ``target``, ``export`` (torch.export), ``import`` (torch -> Relax),
    ``tune``, ``build``, ``export-lib`` (writing the deployable library), ``rpc``.
    """

    def __init__(self, stage: str, target: Any, message: str):
        self.stage = stage
        self.target = _short_target(target)
        super().__init__(f"TVM {stage} stage failed for target {self.target}: {message}")


def _short_target(target: Any) -> str:
    """kind/mtriple/mcpu of a target (the full JSON lists dozens of feature flags)."""
    if target is None:
        return "<none>"
    if isinstance(target, tvm.target.Target):
        d = {"kind": target.kind.name}
        for k in ("mtriple", "mcpu", "num-cores"):
            v = target.attrs.get(k, None) if hasattr(target.attrs, "get") else None
            if v is not None:
                d[k] = v if isinstance(v, int) else str(v)
        return json.dumps(d)
    if isinstance(target, dict):
        return json.dumps(target, default=str)
    return str(target)


# --------------------------------------------------------------------------------------------
# Targets
# --------------------------------------------------------------------------------------------


def host_cpu() -> str:
    """LLVM name of the host CPU (e.g. ``znver4``, ``skylake-avx512``): hwopt.targets.probe.llvm_cpu."""
    return probe.llvm_cpu()


def _host_arch() -> str:
    m = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(m, m)


def _host_spec() -> dict:
    return {"kind": "llvm", "mcpu": host_cpu(), "num-cores": probe.physical_cores()}


def tvm_target(spec: dict | str | tvm.target.Target) -> tvm.target.Target:
    """Make a ``tvm.target.Target``.

    * ``"host"``, ``"llvm"``, ``"native"`` or ``{"kind": "llvm"}`` (no ``mtriple``/``mcpu``): the
      host CPU, with ``mcpu`` detected and ``num-cores`` set to the physical core count.
    * a dict in TVM 0.27's JSON form, e.g. ``{"kind": "llvm", "mtriple": "aarch64-linux-gnu",
      "mcpu": "cortex-a72"}`` (a JSON string of it is accepted too).
    * any other string is passed to ``tvm.target.Target`` (e.g. ``"c"`` or a target tag).
    """
    if isinstance(spec, tvm.target.Target):
        return spec
    try:
        if isinstance(spec, str):
            s = spec.strip()
            if s in ("host", "llvm", "native"):
                return tvm.target.Target(_host_spec())
            if s.startswith("{"):
                spec = json.loads(s)
            else:
                return tvm.target.Target(s)
        if isinstance(spec, dict):
            d = dict(spec)
            if d.get("kind") == "llvm" and "mtriple" not in d and "mcpu" not in d:
                host = _host_spec()
                for k, v in host.items():
                    d.setdefault(k, v)
            return tvm.target.Target(d)
    except CompileError:
        raise
    except Exception as exc:  # TVMError, ValueError, JSONDecodeError
        raise CompileError("target", spec, f"invalid target spec: {exc}") from exc
    raise CompileError("target", spec, f"unsupported target spec type {type(spec).__name__}")


def _attr(target: tvm.target.Target, key: str, default=None):
    try:
        v = target.attrs.get(key, None)
    except Exception:
        v = None
    return default if v is None else v


def _triple(target: tvm.target.Target) -> str:
    t = _attr(target, "mtriple", "")
    return str(t) if t else ""


def _is_bare_metal(target: tvm.target.Target) -> bool:
    """Microcontroller targets: no OS, so no dynamic loader and no TVM runtime."""
    if target.kind.name != "llvm":
        return False
    t = _triple(target)
    return t.startswith(("thumb", "armv6m", "armv7m", "armv7em", "armv8m")) or "-none" in t


def _is_host_runnable(target: tvm.target.Target) -> bool:
    kind = target.kind.name
    if kind == "c":
        return True
    if kind != "llvm":
        return False
    t = _triple(target)
    if not t:
        return True
    if _is_bare_metal(target):
        return False
    arch = t.split("-")[0]
    return arch == _host_arch() and "android" not in t


def _target_slug(target: tvm.target.Target) -> str:
    """Stable directory name for a target's tuning database."""
    parts = [target.kind.name, _triple(target), str(_attr(target, "mcpu", "") or "")]
    text = "-".join(p for p in parts if p)
    text = "".join(c if c.isalnum() or c in "-_." else "_" for c in text)
    h = hashlib.sha1(str(target).encode()).hexdigest()[:8]
    return f"{text}-{h}"


def _cross_cc(target: tvm.target.Target) -> str | None:
    """Compiler/linker for the target's shared library; None means the host default."""
    if target.kind.name == "c" or _is_host_runnable(target):
        return None
    t = _triple(target)
    if "android" in t:
        cc = os.environ.get("HWOPT_ANDROID_CC")
        if cc:
            if shutil.which(cc):
                return cc
            raise CompileError("export-lib", target, f"$HWOPT_ANDROID_CC={cc!r} not found")
        for api in range(35, 20, -1):
            cand = f"{t.split('-')[0]}-linux-android{api}-clang"
            if shutil.which(cand):
                return cand
        raise CompileError(
            "export-lib",
            target,
            "no Android NDK compiler found (looked for $HWOPT_ANDROID_CC and "
            "aarch64-linux-android<API>-clang on PATH); install the NDK or pass cc=",
        )
    arch = t.split("-")[0]
    if arch in ("aarch64", "arm64"):
        cc = "aarch64-linux-gnu-gcc"
        pkg = "gcc-aarch64-linux-gnu"
    elif arch.startswith("arm"):
        cc = "arm-linux-gnueabihf-gcc"
        pkg = "gcc-arm-linux-gnueabihf"
    else:
        cc = f"{arch}-linux-gnu-gcc"
        pkg = f"gcc-{arch.replace('_', '-')}-linux-gnu"
    if shutil.which(cc) is None:
        raise CompileError(
            "export-lib",
            target,
            f"cross compiler {cc!r} not found on PATH (apt-get install {pkg}, or pass cc=)",
        )
    return cc
