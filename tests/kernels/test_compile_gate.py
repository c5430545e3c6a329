"""The compile gate: every kernel compiles ahead of time for real GPUs (sm_90 and sm_80), with
no spills, wgmma and 16-byte asynchronous loads of both operands on sm_90, and no
acquire/release atomics, for every autotune configuration. The interpreter that runs the other
kernel tests cannot see any of this (it ran a forward kernel no GPU could compile).

The compiler runs in a subprocess without ``TRITON_INTERPRET`` (set for this session by
conftest.py), through ``python -m fastalign.kernels.report`` and the same launch plans the
launchers use.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

triton = pytest.importorskip("triton")

CORE_SHAPE = "16384x4096x128256"


def _compiler_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"  # the default; set to silence triton 3.9's notice
    return env


def _toolchain_available() -> bool:
    try:
        from triton import knobs

        return os.path.exists(knobs.nvidia.ptxas.path) and os.path.exists(knobs.nvidia.cuobjdump.path)
    except Exception:  # noqa: BLE001 - any failure means no bundled CUDA toolchain
        return False


pytestmark = pytest.mark.skipif(not _toolchain_available(), reason="triton ships no ptxas/cuobjdump here")


def _run_python(code: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
        env=_compiler_env(), timeout=timeout,
    )


def test_every_kernel_and_configuration_passes_the_gate(tmp_path):
    out = tmp_path / "gate.json"
    proc = subprocess.run(
        [sys.executable, "-m", "fastalign.kernels.report", "--gate", "--shape", CORE_SHAPE,
         "--json", str(out)],
        capture_output=True, text=True, env=_compiler_env(), timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    from fastalign.kernels import autotune

    # Every configuration the autotuner can pick on each target is in the report.
    for arch in (80, 90):
        for dtype in ("bf16", "fp16", "fp32"):
            for table, kernels in (("forward", ["forward"]), ("dlogits", ["dlogits"]),
                                   ("fused_backward", ["fused_backward_rows", "fused_backward_vocab"])):
                for kernel in kernels:
                    wanted = len(autotune.configs_for(table, arch, dtype))
                    seen = [r for r in rows if r["arch"] == arch and r["dtype"] == dtype
                            and r["kernel"] == kernel and r["variant"] == "full"]
                    assert len(seen) == wanted, (arch, dtype, kernel)
    for row in rows:
        assert row["compiled"], row
        assert row["spill_instructions"] == 0, row
        assert row["atomic_fences"] == 0, row
        if row["kernel"] != "combine" and row["dtype"] != "fp32":
            assert row["gemm_loop_async"] >= 2 and row["async_narrow"] == 0, row
            assert row["loop_sync_loads"] == 0, row
            if row["arch"] == 90:
                assert row["wgmma"], row
    # The relaxed atomics of the minimum-memory backward are there (and fence-free).
    assert any(r["atomics"] for r in rows if r["kernel"] == "fused_backward_rows")


def test_gate_catches_a_non_constexpr_global_that_the_interpreter_runs(kernel_device):
    """Mutation twin: the kernel that runs under the interpreter fails the gate."""
    from tests.kernels.bad_global_kernel import scale_kernel

    x = torch.arange(8, dtype=torch.float32, device=kernel_device)
    y = torch.empty_like(x)
    if os.environ.get("TRITON_INTERPRET") == "1":
        scale_kernel[(1,)](x, y, 8, BLOCK=1024)
        assert torch.equal(y, 2 * x)
    proc = _run_python("""
        from fastalign.kernels import report
        from tests.kernels.bad_global_kernel import LAUNCH
        row = report.compile_case(("scale", "full", LAUNCH, None), 90, "fp32")
        print("PROBLEMS:", row.problems)
    """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "does not compile" in proc.stdout and "global variable" in proc.stdout, proc.stdout


def test_gate_catches_spills():
    """Mutation twin: a 128x256 forward tile (removed from the lists because of it) spills."""
    proc = _run_python("""
        import triton
        from fastalign.kernels import report
        config = triton.Config({"BLOCK_N": 128, "BLOCK_V": 256, "BLOCK_K": 64, "GROUP_N": 16},
                               num_warps=8, num_stages=3)
        launch = report.launches(16384, 4096, 128256, "bf16", 90, "full")["forward"]
        row = report.compile_case(("forward", "full", launch, config), 90, "bf16")
        print("PROBLEMS:", row.problems)
    """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "spill instructions" in proc.stdout, proc.stdout


def test_specialization_matches_the_jit():
    """aot.specialize marks integers exactly as the installed Triton's JIT does (1 -> constant,
    multiples of 16 -> divisibility), so the gate compiles the variants that really run."""
    jit = pytest.importorskip("triton.runtime.jit")
    native = getattr(jit, "native_specialize_impl", None)
    if native is None:
        pytest.skip("this triton has no native_specialize_impl")
    from triton.backends.compiler import BaseBackend

    from fastalign.kernels import aot
    from tests.kernels.bad_global_kernel import LAUNCH

    for value in (1, 2, 16, 48, 4096, 128256, 2**31 + 16, -32):
        launch = LAUNCH.__class__(**{**LAUNCH.__dict__, "scalars": {"n": value}})
        signature, constexprs, attrs = aot.specialize(launch, None)
        kind, attr = native(BaseBackend, value, False, True, True)
        index = 2  # (x_ptr, y_ptr, n, BLOCK)
        if kind == "constexpr":
            assert signature["n"] == "constexpr" and constexprs["n"] == value
        else:
            assert signature["n"] == kind, value
            assert ((index,) in attrs) == ("D" in attr), value
