"""Write, build and run a firmware image: the C project for a Cortex-M target, built with arm-none-eabi-gcc
into an ELF for the board, run in QEMU's MPS2 board models with semihosting I/O.

QEMU boards: `mps2-an386` (Cortex-M4), `mps2-an500` (Cortex-M7); code at 0x00000000, SRAM at 0x20000000.
Under `-icount shift=0` QEMU advances its virtual clock by 1 ns per guest instruction, and the boards'
SysTick runs on their 25 MHz system clock, so one SysTick tick is 40 instructions, identically on every
run: instruction counts, not cycles (a real core retires some instructions in several cycles and
dual-issues others).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..fileio import atomic_write
from ..ir import Graph
from . import csource
from .kernels import CompiledKernel, FirmwareError, compile_kernels
from .plan import Plan, plan as make_plan

TOOLS = {"arm-none-eabi-gcc": "gcc-arm-none-eabi", "arm-none-eabi-size": "binutils-arm-none-eabi",
         "arm-none-eabi-nm": "binutils-arm-none-eabi", "qemu-system-arm": "qemu-system-arm"}
APT_PACKAGES = "gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm"
BOARDS = {"cortex-m4": "mps2-an386", "cortex-m7": "mps2-an500"}
FPU = {"cortex-m4": "fpv4-sp-d16", "cortex-m7": "fpv5-sp-d16"}
SYSCLK_HZ = 25_000_000           # MPS2 system clock, SysTick's clock source in QEMU
INSTRUCTIONS_PER_TICK = 1e9 / SYSCLK_HZ  # icount shift=0: 1 ns of virtual time per instruction
STACK_BYTES = 8192


def toolchain_missing() -> str | None:
    """None when the firmware can be built and run here, else what is missing and how to install it."""
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if not missing:
        newlib = subprocess.run(["arm-none-eabi-gcc", "-print-file-name=libc_nano.a"], capture_output=True, text=True)
        if not os.path.isabs(newlib.stdout.strip()):
            return f"newlib for arm-none-eabi is missing: apt-get install {APT_PACKAGES}"
        return None
    return f"{', '.join(missing)} not on PATH: apt-get install {APT_PACKAGES}"


def _mcpu(target) -> str:
    t = target.tvm_target if hasattr(target, "tvm_target") else dict(target)
    mcpu = str(t.get("mcpu", ""))
    triple = str(t.get("mtriple", ""))
    if not triple.startswith("thumbv7em") or mcpu not in BOARDS:
        name = getattr(target, "name", t)
        raise FirmwareError(f"target {name}: firmware export needs a Cortex-M4/M7 TVM target "
                            f"(mtriple thumbv7em-*, mcpu one of {sorted(BOARDS)}); got mtriple={triple!r} mcpu={mcpu!r}")
    return mcpu


def kernel_target(target) -> dict:
    """The target's TVM target for the kernels, with the hard-float calling convention the C side uses."""
    t = dict(target.tvm_target if hasattr(target, "tvm_target") else target)
    t.pop("host", None)
    t["mfloat-abi"] = "hard"
    return t


def cflags(mcpu: str) -> list[str]:
    return [f"-mcpu={mcpu}", "-mthumb", "-mfloat-abi=hard", f"-mfpu={FPU[mcpu]}", "-O2", "-ffunction-sections",
            "-fdata-sections", "-ffreestanding", "-Wall", "-Wno-unused-function"]


SOURCES = ["startup.c", "runtime.c", "model.c", "weights.c", "main.c"]


@dataclass
class FirmwareRun:
    outputs: list[np.ndarray]
    kernel_ticks: list[int]    # SysTick ticks per kernel, in call order (first sample)
    total_ticks: int           # SysTick ticks of the whole network (first sample)

    @property
    def instructions(self) -> float:
        """Instructions executed by the network (QEMU icount; SysTick resolution: 40 instructions)."""
        return self.total_ticks * INSTRUCTIONS_PER_TICK


@dataclass
class Firmware:
    directory: Path
    target: str
    mcpu: str
    board: str
    plan: Plan
    kernels: list[CompiledKernel]
    input_specs: list[tuple[tuple[int, ...], str]]
    output_specs: list[tuple[tuple[int, ...], str]]
    weight_bytes: int                       # bytes of the const weight arrays hwopt generated
    sizes: dict = field(default_factory=dict)  # measured from the ELF (see measure())

    @property
    def elf(self) -> Path:
        return self.directory / "firmware.elf"

    def build(self) -> "Firmware":
        """Compile and link the project with arm-none-eabi-gcc (the same commands as its Makefile)."""
        why = toolchain_missing()
        if why:
            raise FirmwareError(f"cannot build firmware: {why}")
        d = self.directory
        cmd = (["arm-none-eabi-gcc", *cflags(self.mcpu), "-nostartfiles", "--specs=nano.specs", "-T", "link.ld",
                "-Wl,--gc-sections", "-Wl,-Map=firmware.map", "-o", "firmware.elf.tmp", *SOURCES, "kernels.o",
                "-lm", "-lc", "-lgcc"])
        r = subprocess.run(cmd, cwd=d, capture_output=True, text=True)
        if r.returncode != 0:
            raise FirmwareError(f"arm-none-eabi-gcc failed in {d} (does the image fit the target's flash/SRAM?):\n"
                                f"{r.stderr.strip()[-3000:]}")
        os.replace(d / "firmware.elf.tmp", self.elf)
        self.sizes = self.measure()
        return self

    def measure(self) -> dict:
        """Flash and RAM of the ELF, by section (arm-none-eabi-size -A) and by hwopt symbol (nm)."""
        r = subprocess.run(["arm-none-eabi-size", "-A", str(self.elf)], capture_output=True, text=True, check=True)
        sec = {}
        for line in r.stdout.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0].startswith(".") and parts[1].isdigit():
                sec[parts[0]] = int(parts[1])
        flash = sum(sec.get(s, 0) for s in (".isr_vector", ".text", ".rodata", ".ARM.extab", ".ARM.exidx", ".data"))
        ram = sum(sec.get(s, 0) for s in (".data", ".bss", ".stack"))
        r = subprocess.run(["arm-none-eabi-nm", "-S", "--size-sort", str(self.elf)], capture_output=True, text=True,
                           check=True)
        weights = arena = kernels = 0
        for line in r.stdout.splitlines():
            parts = line.split()
            if len(parts) != 4:
                continue
            size, name = int(parts[1], 16), parts[3]
            if name.startswith("hwopt_w"):
                weights += size
            elif name == "hwopt_arena":
                arena = size
            elif name.startswith("__tvm_ffi_hwopt_k") or name.startswith("hwopt_k"):
                kernels += size
        return {"sections": sec, "flash_bytes": flash, "ram_bytes": ram, "weights_bytes": weights,
                "arena_bytes": arena, "kernel_code_bytes": kernels, "stack_bytes": sec.get(".stack", 0)}

    def run(self, *inputs, timeout: float = 600.0) -> FirmwareRun:
        """Run the image in QEMU on `inputs`, read the outputs back. Each input is an array or tensor of the graph's
        input shape or a batch of N such samples stacked on the batch axis (one QEMU session runs them all)."""
        why = toolchain_missing()
        if why:
            raise FirmwareError(f"cannot run firmware: {why}")
        if not self.elf.exists():
            raise FirmwareError(f"{self.elf} is not built: call build() first")
        if len(inputs) != len(self.input_specs):
            raise FirmwareError(f"firmware takes {len(self.input_specs)} input(s), got {len(inputs)}")
        with tempfile.TemporaryDirectory(prefix="hwopt_qemu_") as work:
            samples = None
            for i, (x, (shape, dtype)) in enumerate(zip(inputs, self.input_specs)):
                arr = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x)
                if tuple(arr.shape[1:]) != tuple(shape[1:]) or arr.shape[0] % shape[0]:
                    raise FirmwareError(f"input {i}: shape {tuple(arr.shape)} is not a batch of the firmware's {tuple(shape)}")
                n = arr.shape[0] // shape[0]
                if samples is not None and n != samples:
                    raise FirmwareError(f"inputs hold different numbers of samples ({samples} and {n})")
                samples = n
                np.ascontiguousarray(arr.astype(dtype)).tofile(os.path.join(work, f"input{i}.bin"))
            cmd = ["qemu-system-arm", "-M", self.board, "-nographic", "-monitor", "none", "-serial", "none",
                   "-semihosting-config", "enable=on,target=native", "-icount", "shift=0", "-kernel", str(self.elf.resolve())]
            try:
                r = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=timeout)
            except subprocess.TimeoutExpired:
                raise FirmwareError(f"QEMU ({self.board}) did not finish within {timeout:.0f} s") from None
            if r.returncode != 0:
                raise FirmwareError(f"firmware failed in QEMU {self.board} (exit {r.returncode}): "
                                    f"{(r.stdout + r.stderr).strip()[-2000:]}")
            outs = []
            for i, (shape, dtype) in enumerate(self.output_specs):
                outs.append(np.fromfile(os.path.join(work, f"output{i}.bin"), dtype=dtype)
                            .reshape((samples * shape[0],) + tuple(shape[1:])))
            ticks = np.fromfile(os.path.join(work, "ticks.bin"), dtype="<u4").astype(int).tolist()
        return FirmwareRun(outs, ticks[:-1], ticks[-1])


def export_firmware(graph: Graph, target, directory: str | os.PathLike, *, build: bool = True) -> Firmware:
    """Write the firmware C project of `graph` for Cortex-M `target` (a hwopt Target) into `directory`
    and, when `build` and the toolchain is installed, build `firmware.elf`. The graph is only read."""
    mcpu = _mcpu(target)
    graph.verify_once()
    p = make_plan(graph)
    kernels, obj = compile_kernels(graph, p, kernel_target(target))
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    inputs = list(p.inputs)
    outputs = list(p.outputs)
    files = csource.model_sources(p, kernels, inputs, outputs, {})
    files.update({"runtime.h": csource.RUNTIME_H, "runtime.c": csource.RUNTIME_C, "startup.c": csource.STARTUP_C,
                  "main.c": csource.MAIN_C})
    sram = getattr(target, "sram_bytes", None) or 4 << 20
    flash = getattr(target, "flash_bytes", None) or 4 << 20
    files["link.ld"] = csource.linker_script(flash, sram, STACK_BYTES)
    files["Makefile"] = _makefile(mcpu)
    files["README.md"] = _readme(getattr(target, "name", mcpu), mcpu, p, kernels)
    for name, text in files.items():
        atomic_write(d / name, text)
    atomic_write(d / "kernels.o", obj)
    weight_bytes = sum(a.data.nbytes for k in kernels for a in k.args if a.data is not None)
    fw = Firmware(d, getattr(target, "name", mcpu), mcpu, BOARDS[mcpu], p, kernels,
                  [(tuple(graph[b].spec.shape), graph[b].spec.dtype) for b in inputs],
                  [(tuple(graph[b].spec.shape), graph[b].spec.dtype) for b in outputs], weight_bytes)
    if build and toolchain_missing() is None:
        fw.build()
    return fw


def _makefile(mcpu: str) -> str:
    return f"""# Generated by hwopt.firmware. Needs: apt-get install {APT_PACKAGES}
CC = arm-none-eabi-gcc
CFLAGS = {' '.join(cflags(mcpu))}
LDFLAGS = -nostartfiles --specs=nano.specs -T link.ld -Wl,--gc-sections -Wl,-Map=firmware.map
SRCS = {' '.join(SOURCES)}

firmware.elf: $(SRCS) kernels.o link.ld runtime.h model.h
\t$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $(SRCS) kernels.o -lm -lc -lgcc
\tarm-none-eabi-size $@

# Runs on every sample in input0.bin in this directory; writes output0.bin and ticks.bin.
run: firmware.elf
\tqemu-system-arm -M {BOARDS[mcpu]} -nographic -monitor none -serial none -semihosting-config enable=on,target=native -icount shift=0 -kernel firmware.elf

clean:
\trm -f firmware.elf firmware.map output*.bin ticks.bin
.PHONY: run clean
"""


def _readme(target: str, mcpu: str, p: Plan, kernels: list[CompiledKernel]) -> str:
    rows = "\n".join(f"| {i} | `{k.symbol}` | {k.kind} | {', '.join(k.kernel.nodes)} |" for i, k in enumerate(kernels))
    return f"""# hwopt firmware for {target} ({mcpu})

`make` builds `firmware.elf` (code at 0x00000000, SRAM at 0x20000000, sized to the target's limits);
`make run` runs it in QEMU's {BOARDS[mcpu]} board on `input0.bin` (raw little-endian tensor), writing
`output0.bin` and `ticks.bin` (SysTick ticks per kernel, then the total; under `-icount shift=0` one tick
is {INSTRUCTIONS_PER_TICK:g} instructions - instruction counts, not cycles).

- `kernels.o`: the kernels, compiled by Apache TVM for {mcpu} (TVM-FFI packed functions over DLTensors)
- `model.c`: the static runner - the call sequence over one activation arena of {p.arena_bytes} bytes
  (peak live activations {p.peak_live_bytes} bytes); no interpreter, no malloc
- `weights.c`: the weights as const arrays (flash)
- `runtime.c`, `startup.c`, `main.c`: semihosting I/O, SysTick, the symbols TVM kernels call, vector table

| # | kernel | kind | graph nodes |
|---|---|---|---|
{rows}
"""
