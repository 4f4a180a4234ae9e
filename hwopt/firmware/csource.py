"""The C side of the firmware: startup code, the few runtime symbols TVM kernels call, semihosting I/O,
the generated static runner (the kernel call sequence over one arena), weights as const arrays, the
linker script and the Makefile. Nothing here allocates memory at run time.
"""
from __future__ import annotations

import numpy as np

from .kernels import CompiledKernel
from .plan import ARENA_ALIGN, Plan

# DLPack data type codes (dlpack.h): kDLInt = 0, kDLUInt = 1, kDLFloat = 2.
_DL_DTYPE = {"float32": (2, 32), "int8": (0, 8), "int32": (0, 32), "uint8": (1, 8), "int64": (0, 64)}
_C_TYPE = {"float32": "float", "int8": "int8_t", "int32": "int32_t", "uint8": "uint8_t", "int64": "int64_t"}

RUNTIME_H = r"""/* hwopt firmware runtime: the DLPack / TVM-FFI structures TVM's kernels take (layouts of dlpack.h and
   tvm/ffi/c_api.h, TVM-FFI 0.1), semihosting I/O and the SysTick tick counter. */
#ifndef HWOPT_RUNTIME_H
#define HWOPT_RUNTIME_H
#include <stdint.h>
#include <stddef.h>

typedef struct { int32_t device_type; int32_t device_id; } DLDevice;
typedef struct { uint8_t code; uint8_t bits; uint16_t lanes; } DLDataType;
typedef struct {
  void* data; DLDevice device; int32_t ndim; DLDataType dtype;
  const int64_t* shape; const int64_t* strides; uint64_t byte_offset;
} DLTensor;
typedef struct {
  int32_t type_index; uint32_t zero_padding;
  union { int64_t v_int64; double v_float64; const void* v_ptr; } v;
} TVMFFIAny;
enum { kTVMFFINone = 0, kTVMFFIDLTensorPtr = 7 };
typedef int32_t (*hwopt_kernel_fn)(void* self, const TVMFFIAny* args, int32_t num_args, TVMFFIAny* result);

int hwopt_semihost_open(const char* path, int mode);
int hwopt_semihost_read(int fd, void* buf, uint32_t nbytes);
int hwopt_semihost_write(int fd, const void* buf, uint32_t nbytes);
int hwopt_semihost_flen(int fd);
void hwopt_semihost_close(int fd);
int hwopt_semihost_write_file(const char* path, const void* buf, uint32_t nbytes);
void hwopt_print(const char* s);
void hwopt_print_u32(const char* label, uint32_t v);
void hwopt_exit(int ok) __attribute__((noreturn));
uint64_t hwopt_ticks(void);
const char* hwopt_last_error(void);
#endif
"""

RUNTIME_C = r"""/* hwopt firmware runtime (see runtime.h). */
#include "runtime.h"

/* ---- Arm semihosting (ARM DUI 0471): BKPT 0xAB, operation in r0, parameter block in r1 */
static int semihost(int op, const void* arg) {
  register int r0 __asm__("r0") = op;
  register const void* r1 __asm__("r1") = arg;
  __asm__ volatile("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
  return r0;
}
enum { SYS_OPEN = 0x01, SYS_CLOSE = 0x02, SYS_WRITE0 = 0x04, SYS_WRITE = 0x05, SYS_READ = 0x06, SYS_FLEN = 0x0C,
       SYS_EXIT = 0x18 };

static uint32_t cstrlen(const char* s) { uint32_t n = 0; while (s[n]) n++; return n; }

int hwopt_semihost_open(const char* path, int mode) {
  uint32_t block[3] = {(uint32_t)path, (uint32_t)mode, cstrlen(path)};
  return semihost(SYS_OPEN, block);
}

/* read / write return 0 when all `nbytes` were transferred */
int hwopt_semihost_read(int fd, void* buf, uint32_t nbytes) {
  uint32_t block[3] = {(uint32_t)fd, (uint32_t)buf, nbytes};
  return semihost(SYS_READ, block);
}

int hwopt_semihost_write(int fd, const void* buf, uint32_t nbytes) {
  uint32_t block[3] = {(uint32_t)fd, (uint32_t)buf, nbytes};
  return semihost(SYS_WRITE, block);
}

int hwopt_semihost_flen(int fd) { return semihost(SYS_FLEN, &fd); }
void hwopt_semihost_close(int fd) { semihost(SYS_CLOSE, &fd); }

int hwopt_semihost_write_file(const char* path, const void* buf, uint32_t nbytes) {
  int fd = hwopt_semihost_open(path, 5 /* "wb" */);
  if (fd < 0) return -1;
  int left = hwopt_semihost_write(fd, buf, nbytes);
  hwopt_semihost_close(fd);
  return left == 0 ? 0 : -2;
}

void hwopt_print(const char* s) { semihost(SYS_WRITE0, s); }

void hwopt_print_u32(const char* label, uint32_t v) {
  char buf[12]; int i = 11; buf[i] = 0;
  do { buf[--i] = (char)('0' + v % 10); v /= 10; } while (v);
  hwopt_print(label); hwopt_print(buf + i); hwopt_print("\n");
}

void hwopt_exit(int ok) {
  /* ADP_Stopped_ApplicationExit ends QEMU with status 0; any other reason with status 1 */
  semihost(SYS_EXIT, (const void*)(ok ? 0x20026 : 0x20023));
  for (;;) {}
}

/* ---- what TVM's kernels call */
static char last_error[160];
const char* hwopt_last_error(void) { return last_error; }

void TVMFFIErrorSetRaisedFromCStrParts(const char* kind, const char** parts, int32_t n) {
  uint32_t at = 0;
  const char* first[2] = {kind, ": "};
  for (int k = 0; k < 2; k++)
    for (const char* c = first[k]; c && *c && at + 1 < sizeof last_error; c++) last_error[at++] = *c;
  for (int32_t p = 0; p < n; p++)
    for (const char* c = parts[p]; c && *c && at + 1 < sizeof last_error; c++) last_error[at++] = *c;
  last_error[at] = 0;
}

/* Referenced by the exception-index tables LLVM emits; nothing unwinds through a kernel. */
void __aeabi_unwind_cpp_pr0(void) {}

/* ---- SysTick: 24-bit down-counter on the core clock; wraps counted by its interrupt */
#define SYST_CSR (*(volatile uint32_t*)0xE000E010)
#define SYST_RVR (*(volatile uint32_t*)0xE000E014)
#define SYST_CVR (*(volatile uint32_t*)0xE000E018)
static volatile uint32_t systick_wraps;
void SysTick_Handler(void) { systick_wraps++; }

void hwopt_systick_start(void) {
  SYST_RVR = 0xFFFFFF; SYST_CVR = 0; SYST_CSR = 0x7; /* core clock, interrupt, enable */
}

uint64_t hwopt_ticks(void) {
  uint32_t w, v;
  do { w = systick_wraps; v = SYST_CVR; } while (w != systick_wraps);
  return ((uint64_t)w << 24) + (0xFFFFFFu - v);
}
"""

STARTUP_C = r"""/* hwopt firmware start-up: vector table, reset handler (FPU on, .data copied, .bss zeroed), faults. */
#include "runtime.h"

extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss, _estack;
int main(void);
void SysTick_Handler(void);
void hwopt_systick_start(void);

void Reset_Handler(void) {
  *(volatile uint32_t*)0xE000ED88 |= 0xFu << 20;  /* CPACR: full access to CP10/CP11 (the FPU) */
  __asm__ volatile("dsb\n isb");
  for (uint32_t *s = &_sidata, *d = &_sdata; d < &_edata;) *d++ = *s++;
  for (uint32_t* d = &_sbss; d < &_ebss;) *d++ = 0;
  hwopt_systick_start();
  hwopt_exit(main() == 0);
}

void Fault_Handler(void) {
  hwopt_print("hwopt: fault\n");
  hwopt_exit(0);
}

__attribute__((section(".isr_vector"), used))
const void* const hwopt_vectors[16] = {
  &_estack, (void*)Reset_Handler, (void*)Fault_Handler, (void*)Fault_Handler, (void*)Fault_Handler,
  (void*)Fault_Handler, (void*)Fault_Handler, 0, 0, 0, 0, (void*)Fault_Handler, (void*)Fault_Handler, 0,
  (void*)Fault_Handler, (void*)SysTick_Handler,
};
"""

MAIN_C = r"""/* Runs the network on every sample of input<i>.bin (semihosting; the file holds N samples back to back),
   appends each sample's outputs to output<i>.bin, and writes ticks.bin: the first sample's SysTick counts
   per kernel, then its total, as little-endian uint32. */
#include "runtime.h"
#include "model.h"

int main(void) {
  int in_fd[HWOPT_NUM_INPUTS], out_fd[HWOPT_NUM_OUTPUTS];
  uint32_t samples = 0xFFFFFFFFu;
  for (int i = 0; i < HWOPT_NUM_INPUTS; i++) {
    in_fd[i] = hwopt_semihost_open(hwopt_input_files[i], 1 /* rb */);
    int len = in_fd[i] < 0 ? -1 : hwopt_semihost_flen(in_fd[i]);
    if (len < 0 || len % hwopt_input_bytes[i]) {
      hwopt_print("hwopt: cannot read "); hwopt_print(hwopt_input_files[i]); hwopt_print("\n");
      return 1;
    }
    uint32_t n = (uint32_t)len / hwopt_input_bytes[i];
    if (n < samples) samples = n;
  }
  for (int i = 0; i < HWOPT_NUM_OUTPUTS; i++)
    if ((out_fd[i] = hwopt_semihost_open(hwopt_output_files[i], 5 /* wb */)) < 0) return 1;
  for (uint32_t s = 0; s < samples; s++) {
    for (int i = 0; i < HWOPT_NUM_INPUTS; i++)
      if (hwopt_semihost_read(in_fd[i], hwopt_inputs[i], hwopt_input_bytes[i]) != 0) return 1;
    uint64_t t0 = hwopt_ticks();
    int failed = hwopt_run();
    uint32_t total = (uint32_t)(hwopt_ticks() - t0);
    if (failed) {
      hwopt_print_u32("hwopt: kernel failed: ", (uint32_t)(failed - 1));
      hwopt_print(hwopt_last_error()); hwopt_print("\n");
      return 1;
    }
    for (int i = 0; i < HWOPT_NUM_OUTPUTS; i++)
      if (hwopt_semihost_write(out_fd[i], hwopt_outputs[i], hwopt_output_bytes[i]) != 0) return 1;
    if (s == 0) {
      hwopt_kernel_ticks[HWOPT_NUM_KERNELS] = total;
      if (hwopt_semihost_write_file("ticks.bin", hwopt_kernel_ticks, sizeof hwopt_kernel_ticks) != 0) return 1;
      hwopt_print_u32("hwopt: first sample, SysTick ticks ", total);
    }
  }
  for (int i = 0; i < HWOPT_NUM_INPUTS; i++) hwopt_semihost_close(in_fd[i]);
  for (int i = 0; i < HWOPT_NUM_OUTPUTS; i++) hwopt_semihost_close(out_fd[i]);
  hwopt_print_u32("hwopt: ok, samples ", samples);
  return 0;
}
"""


def linker_script(flash_bytes: int, sram_bytes: int, stack_bytes: int) -> str:
    return f"""/* hwopt firmware memory map: code and constants in flash at 0x00000000, data in SRAM at 0x20000000
   (the MPS2 boards' ZBT SRAMs in QEMU), both sized to the target's limits so an image that does not fit
   fails to link. */
MEMORY
{{
  FLASH (rx) : ORIGIN = 0x00000000, LENGTH = {flash_bytes}
  RAM (rwx)  : ORIGIN = 0x20000000, LENGTH = {sram_bytes}
}}
ENTRY(Reset_Handler)
SECTIONS
{{
  .isr_vector : {{ KEEP(*(.isr_vector)) }} > FLASH
  .text : {{ *(.text*) *(.glue_7) *(.glue_7t) }} > FLASH
  .rodata : {{ . = ALIGN(16); *(.rodata*) . = ALIGN(4); }} > FLASH
  .ARM.extab : {{ *(.ARM.extab* .gnu.linkonce.armextab.*) }} > FLASH
  .ARM.exidx : {{ *(.ARM.exidx* .gnu.linkonce.armexidx.*) }} > FLASH
  _sidata = LOADADDR(.data);
  .data : {{ . = ALIGN(4); _sdata = .; *(.data*) . = ALIGN(4); _edata = .; }} > RAM AT > FLASH
  .bss (NOLOAD) : {{ . = ALIGN(16); _sbss = .; *(.bss*) *(COMMON) . = ALIGN(4); _ebss = .; }} > RAM
  .stack (NOLOAD) : {{ . = ALIGN(8); . = . + {stack_bytes}; _estack = .; }} > RAM
  /DISCARD/ : {{ *(.comment) *(.ARM.attributes) }}
}}
"""


def _c_array(name: str, arr: np.ndarray) -> str:
    ctype = _C_TYPE[str(arr.dtype)]
    flat = arr.reshape(-1)
    if arr.dtype == np.float32:
        if not np.isfinite(flat).all():
            raise ValueError(f"weight array {name} holds non-finite values")
        vals = [repr(float(v)) + "f" for v in flat]  # float64 repr of a float32 value: exact in C
    else:
        vals = [str(int(v)) for v in flat]
    lines = [", ".join(vals[i:i + 12]) for i in range(0, len(vals), 12)]
    body = ",\n  ".join(lines)
    return f"__attribute__((aligned({ARENA_ALIGN}))) const {ctype} {name}[{len(flat)}] = {{\n  {body}\n}};\n"


def model_sources(plan: Plan, kernels: list[CompiledKernel], input_names: list[str], output_names: list[str],
                  buffer_dtype: dict[str, str]) -> dict[str, str]:
    """model.h, model.c (arena, tensor descriptors, the runner) and weights.c."""
    weights_c = ["/* Weights, in flash. Generated by hwopt.firmware. */\n#include <stdint.h>\n"]
    decls, tensors, calls = [], [], []
    seen_weights: dict[int, str] = {}
    for ki, ck in enumerate(kernels):
        arg_names = []
        for ai, a in enumerate(ck.args):
            tname = f"t{ki}_{ai}"
            shape = ", ".join(str(s) for s in a.shape) or "1"
            code, bits = _DL_DTYPE[a.dtype]
            if a.buffer is not None:
                data = f"(void*)(hwopt_arena + {plan.buffers[a.buffer].offset})"
            else:
                key = id(a.data)
                wname = seen_weights.get(key)
                if wname is None:
                    wname = f"hwopt_w{len(seen_weights)}"
                    seen_weights[key] = wname
                    weights_c.append(f"/* {a.name} {list(a.shape)} */\n" + _c_array(wname, np.ascontiguousarray(a.data)))
                    decls.append(f"extern const {_C_TYPE[a.dtype]} {wname}[];")
                data = f"(void*){wname}"
            tensors.append(f"static const int64_t {tname}_shape[{max(1, len(a.shape))}] = {{{shape}}};\n"
                           f"static const DLTensor {tname} = {{{data}, {{1, 0}}, {len(a.shape)}, {{{code}, {bits}, 1}}, "
                           f"{tname}_shape, NULL, 0}};")
            arg_names.append(tname)
        args = ", ".join(f"{{kTVMFFIDLTensorPtr, 0, {{.v_ptr = &{t}}}}}" for t in arg_names)
        tensors.append(f"static const TVMFFIAny args{ki}[{len(arg_names)}] = {{{args}}};")
        decls.append(f"int32_t __tvm_ffi_{ck.symbol}(void*, const TVMFFIAny*, int32_t, TVMFFIAny*);")
        calls.append(f"  /* {ck.kind}: {', '.join(ck.kernel.nodes)} */\n"
                     f"  t = hwopt_ticks(); ret.type_index = kTVMFFINone;\n"
                     f"  if (__tvm_ffi_{ck.symbol}(NULL, args{ki}, {len(arg_names)}, &ret) != 0) return {ki + 1};\n"
                     f"  hwopt_kernel_ticks[{ki}] = (uint32_t)(hwopt_ticks() - t);")
    n_in, n_out = len(input_names), len(output_names)

    def nbytes(b):
        return plan.buffers[b].nbytes

    model_h = f"""/* Generated by hwopt.firmware: the network as a static call sequence. */
#ifndef HWOPT_MODEL_H
#define HWOPT_MODEL_H
#include <stdint.h>
#define HWOPT_ARENA_BYTES {plan.arena_bytes}
#define HWOPT_NUM_KERNELS {len(kernels)}
#define HWOPT_NUM_INPUTS {n_in}
#define HWOPT_NUM_OUTPUTS {n_out}
extern uint8_t hwopt_arena[HWOPT_ARENA_BYTES];
extern uint32_t hwopt_kernel_ticks[HWOPT_NUM_KERNELS + 1];
extern void* const hwopt_inputs[HWOPT_NUM_INPUTS];
extern const uint32_t hwopt_input_bytes[HWOPT_NUM_INPUTS];
extern const char* const hwopt_input_files[HWOPT_NUM_INPUTS];
extern void* const hwopt_outputs[HWOPT_NUM_OUTPUTS];
extern const uint32_t hwopt_output_bytes[HWOPT_NUM_OUTPUTS];
extern const char* const hwopt_output_files[HWOPT_NUM_OUTPUTS];
/* Runs every kernel in order; returns 0, or 1 + the index of the kernel that failed. */
int hwopt_run(void);
#endif
"""
    layout = "\n".join(f" *   {b.name:<24} offset {b.offset:>8}  {b.nbytes:>8} B  live kernels [{b.first}, {b.last}]"
                       for b in sorted(plan.buffers.values(), key=lambda b: b.offset))
    model_c = f"""/* Generated by hwopt.firmware. One activation arena of {plan.arena_bytes} bytes, laid out by hwopt's
 * liveness analysis (peak live bytes {plan.peak_live_bytes}):
{layout}
 */
#include "runtime.h"
#include "model.h"

__attribute__((aligned({ARENA_ALIGN}))) uint8_t hwopt_arena[HWOPT_ARENA_BYTES];
uint32_t hwopt_kernel_ticks[HWOPT_NUM_KERNELS + 1];
void* const hwopt_inputs[HWOPT_NUM_INPUTS] = {{{", ".join(f"hwopt_arena + {plan.buffers[b].offset}" for b in input_names)}}};
const uint32_t hwopt_input_bytes[HWOPT_NUM_INPUTS] = {{{", ".join(str(nbytes(b)) for b in input_names)}}};
const char* const hwopt_input_files[HWOPT_NUM_INPUTS] = {{{", ".join(f'"input{i}.bin"' for i in range(n_in))}}};
void* const hwopt_outputs[HWOPT_NUM_OUTPUTS] = {{{", ".join(f"hwopt_arena + {plan.buffers[b].offset}" for b in output_names)}}};
const uint32_t hwopt_output_bytes[HWOPT_NUM_OUTPUTS] = {{{", ".join(str(nbytes(b)) for b in output_names)}}};
const char* const hwopt_output_files[HWOPT_NUM_OUTPUTS] = {{{", ".join(f'"output{i}.bin"' for i in range(n_out))}}};

{chr(10).join(decls)}

{chr(10).join(tensors)}

int hwopt_run(void) {{
  TVMFFIAny ret;
  uint64_t t;
{chr(10).join(calls)}
  return 0;
}}
"""
    del buffer_dtype
    return {"model.h": model_h, "model.c": model_c, "weights.c": "\n".join(weights_c)}
