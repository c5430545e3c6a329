"""Ahead-of-time compilation of the kernels for a GPU target, on any machine, and what the
compiled code is made of.

``compile_launch`` specializes a launch plan's arguments the way Triton's JIT does (integers
equal to 1 become constants, integers and pointers divisible by 16 get the divisibility
attribute) and compiles it with ``triton.compile`` for ``GPUTarget("cuda", arch, 32)``; no
GPU or driver is needed, only the ``ptxas`` and ``cuobjdump`` that ship with the ``triton``
wheel. ``inspect_kernel`` reads the cubin back: registers, spills, shared memory, wgmma
shapes, the width of global and asynchronous loads, atomics and their memory ordering.
"""

from __future__ import annotations

import inspect
import re
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from .plans import Launch

_DIVISIBILITY = [["tt.divisibility", 16]]
# Registers per SM and shared memory per SM (bytes) of the gated architectures.
REGISTERS_PER_SM = 65536
SHARED_PER_SM = {80: 164 * 1024, 90: 228 * 1024}


def _int_type(value: int) -> str:
    if -(2**31) <= value < 2**31:
        return "i32"
    if -(2**63) <= value < 2**63:
        return "i64"
    return "u64"


def specialize(launch: Launch, config: triton.Config | None) -> tuple[dict, dict, dict]:
    """``(signature, constexprs, attrs)`` of ``ASTSource`` for a launch and a configuration.

    Mirrors the JIT: an ``int`` argument equal to 1 is compiled as the constant 1, one
    divisible by 16 gets ``tt.divisibility=16``; floats are never specialized; pointers are
    assumed 16-byte aligned (what the CUDA caching allocator returns).
    """
    fn = launch.function
    meta = dict(config.kwargs) if config is not None else {}
    signature, constexprs, attrs = {}, {}, {}
    # (Under TRITON_INTERPRET the plan holds a plain Python function: read its parameters.)
    names = getattr(fn, "arg_names", None) or list(inspect.signature(fn).parameters)
    for index, name in enumerate(names):
        if name in launch.constexprs or name in meta:
            signature[name] = "constexpr"
            constexprs[name] = launch.constexprs.get(name, meta.get(name))
        elif name in launch.pointers:
            signature[name] = launch.pointers[name]
            attrs[(index,)] = _DIVISIBILITY
        elif name in launch.scalars:
            value = launch.scalars[name]
            if isinstance(value, bool):
                signature[name] = "u1"
            elif isinstance(value, int):
                if value == 1:
                    signature[name] = "constexpr"
                    constexprs[name] = 1
                    continue
                signature[name] = _int_type(value)
                if value % 16 == 0:
                    attrs[(index,)] = _DIVISIBILITY
            else:
                signature[name] = "fp32"
        else:
            raise ValueError(f"{fn.__name__}: the launch plan gives no value for argument {name!r}")
    return signature, constexprs, attrs


def compile_launch(launch: Launch, config: triton.Config | None, arch: int):
    """Compile one launch for ``sm_<arch>``; returns Triton's ``CompiledKernel``."""
    signature, constexprs, attrs = specialize(launch, config)
    source = ASTSource(launch.function, signature, constexprs, attrs)
    if config is not None:
        options = {"num_warps": config.num_warps, "num_stages": config.num_stages}
    else:
        options = {"num_warps": launch.num_warps, "num_stages": launch.num_stages}
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)


@dataclass
class KernelReport:
    """What one compiled kernel is made of (read from its cubin, PTX and TTGIR)."""

    registers: int
    spill_instructions: int  # STL / LDL in the SASS
    local_bytes: int
    shared_bytes: int  # dynamic shared memory the launch needs
    ctas_per_sm: int
    wgmma_shapes: list[str]
    async_copy_bytes: Counter  # cp.async widths -> count
    tma_loads: int
    global_load_bytes: Counter  # ld.global widths (bytes per thread) -> count
    atomics: int
    atomic_fences: int  # MEMBAR.*.GPU instructions: acquire/release atomics emit them
    dot_loops: list[tuple[int, int]]  # (async copies, sync half loads) per innermost dot loop
    sass_histogram: Counter = field(default_factory=Counter)

    @property
    def narrow_global_loads(self) -> int:
        """Global loads of 2 bytes or less per thread: scalar half-precision operand loads."""
        return sum(count for width, count in self.global_load_bytes.items() if width <= 2)


def _cuobjdump(*args: str) -> str:
    tool = triton.knobs.nvidia.cuobjdump.path
    return subprocess.run([tool, *args], capture_output=True, text=True, check=True).stdout


def _occupancy(registers: int, threads: int, shared: int, arch: int) -> int:
    by_registers = REGISTERS_PER_SM // max(1, registers * threads)
    by_shared = SHARED_PER_SM.get(arch, SHARED_PER_SM[80]) // shared if shared else 32
    return max(0, min(by_registers, by_shared, 2048 // threads))


def _ptx_widths(ptx: str, pattern: str) -> Counter:
    widths: Counter = Counter()
    for match in re.finditer(pattern, ptx):
        vector = int(match.group("vec")[2:]) if match.group("vec") else 1
        widths[vector * int(match.group("bits")) // 8] += 1
    return widths


def dot_loops(ttgir: str) -> list[tuple[int, int]]:
    """``(asynchronous copies, synchronous half-precision global loads)`` of every innermost
    ``scf.for`` that runs a dot, in program order. ``(2, 0)`` for a GEMM loop means both operands are
    pipelined through asynchronous copies and nothing waits on a plain load."""
    found = []
    stack: list[dict] = []  # open scf.for bodies: brace depth at entry and what they hold
    depth = 0
    for line in ttgir.splitlines():
        if "scf.for" in line and line.rstrip().endswith("{"):
            if stack:
                stack[-1]["inner"] = True
            stack.append({"depth": depth, "copies": 0, "loads": 0, "dot": False, "inner": False})
        elif stack:
            if "async_copy_global_to_local" in line:
                stack[-1]["copies"] += 1
            # Synchronous loads of half-precision data: dot operands (fp32 loads inside a loop
            # are accumulator read-modify-writes, which are not operand traffic).
            if re.search(r"= tt\.load ", line) and re.search(r"!tt\.ptr<(bf16|f16)>", line):
                stack[-1]["loads"] += 1
            if re.search(r"warp_group_dot |tt\.dot |ttg\.dot ", line):
                stack[-1]["dot"] = True
        depth += line.count("{") - line.count("}")
        while stack and depth <= stack[-1]["depth"]:
            loop = stack.pop()
            if loop["dot"] and not loop["inner"]:
                found.append((loop["copies"], loop["loads"]))
    return found


def inspect_kernel(compiled, arch: int, threads: int) -> KernelReport:
    """Read registers, spills, shared memory and instruction mix out of a compiled kernel."""
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "kernel.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        usage = _cuobjdump("-res-usage", str(cubin))
        sass = _cuobjdump("-sass", str(cubin))
    registers = int(re.search(r"REG:(\d+)", usage).group(1))
    local = int(re.search(r"LOCAL:(\d+)", usage).group(1))
    opcodes = re.findall(r"^\s+/\*[0-9a-f]+\*/\s+(?:@!?U?P[T\d]+\s+)?([A-Z][A-Za-z0-9_.]+)", sass, re.M)
    histogram = Counter(op.split(".")[0] for op in opcodes)
    ptx = compiled.asm["ptx"]
    shared = int(compiled.metadata.shared)
    return KernelReport(
        registers=registers,
        spill_instructions=histogram["STL"] + histogram["LDL"],
        local_bytes=local,
        shared_bytes=shared,
        ctas_per_sm=_occupancy(registers, threads, shared, arch),
        wgmma_shapes=sorted({op for op in opcodes if op.startswith("HGMMA")}),
        async_copy_bytes=Counter(
            int(n, 0) for n in re.findall(r"cp\.async\.c[ga]\.shared\.global[^;]*?\],\s*(0x[0-9a-f]+|\d+)", ptx)
        ),
        tma_loads=histogram["UTMALDG"],
        global_load_bytes=_ptx_widths(ptx, r"ld\.global(?:\.\w+)*?(?P<vec>\.v[248])?\.(?:b|u|s|f)(?P<bits>8|16|32|64)\b"),
        atomics=sum(histogram[op] for op in ("ATOM", "ATOMG", "RED", "REDG")),
        atomic_fences=sum(1 for op in opcodes if op.startswith("MEMBAR") and op.endswith("GPU")),
        dot_loops=dot_loops(compiled.asm["ttgir"]),
        sass_histogram=histogram,
    )
