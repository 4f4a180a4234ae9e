"""Firmware for Cortex-M targets: the network as a C project (TVM-compiled kernels, a static runner over one
activation arena, weights in flash), built with arm-none-eabi-gcc and run in QEMU.

    fw = export_firmware(graph, hwopt.load_target("cortex-m7"), "out/fw")   # writes + builds firmware.elf
    run = fw.run(x)                      # QEMU mps2-an500; run.outputs, run.kernel_ticks, run.instructions
    fw.sizes                             # flash / RAM / weights / arena bytes measured from the ELF
"""
from .kernels import FirmwareError
from .plan import Plan, plan
from .project import APT_PACKAGES, BOARDS, Firmware, FirmwareRun, export_firmware, toolchain_missing

__all__ = ["APT_PACKAGES", "BOARDS", "Firmware", "FirmwareError", "FirmwareRun", "Plan", "export_firmware", "plan",
           "toolchain_missing"]
