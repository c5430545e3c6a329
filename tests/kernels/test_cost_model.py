"""The cost model's arithmetic and the claims made from it (kernels/cost.py)."""

from __future__ import annotations

import pytest

from fastalign.kernels import cost

CORE = [(4096, 4096, 128256), (16384, 4096, 128256), (32768, 4096, 128256)]


@pytest.mark.parametrize("gpu", ["H100", "H200"])
@pytest.mark.parametrize("n,h,v", CORE)
def test_default_design_is_predicted_near_the_roofline(gpu, n, h, v):
    new = cost.predict(n, h, v, mode="train", design="fastalign", gpu=gpu)
    old = cost.predict(n, h, v, mode="train", design="before", gpu=gpu)
    assert new.fraction >= 0.75
    assert old.fraction < 0.5 < new.fraction
    # Four GEMM-equivalents of work, whatever the design.
    assert sum(p.flops for p in new.phases) == pytest.approx(4 * 2 * n * h * v)
    # The rebuild moves far less: W is no longer streamed from HBM for every row block.
    assert sum(p.hbm_bytes for p in old.phases) > 5 * sum(p.hbm_bytes for p in new.phases)
    assert sum(p.hbm_bytes for p in new.phases) >= new.min_hbm_bytes


def test_roofline_and_phase_arithmetic():
    p = cost.predict(16384, 4096, 128256, mode="train", gpu="H100")
    assert p.roofline_ms == pytest.approx(1e3 * 4 * 2 * 16384 * 4096 * 128256 / 989e12)
    assert p.predicted_ms == pytest.approx(sum(phase.ms for phase in p.phases))
    frozen = cost.predict(16384, 4096, 128256, mode="frozen", gpu="H100")
    assert [ph.name for ph in frozen.phases] == ["forward", "dlogits", "dH (cuBLAS)"]
    assert frozen.roofline_ms == pytest.approx(0.75 * p.roofline_ms)
    forward = cost.predict(16384, 4096, 128256, mode="forward", gpu="H100")
    assert len(forward.phases) == 1 and forward.extra_memory_bytes == 0
    # The chunked backward's extra memory: one 4096-row bf16 gradient chunk + fp32 dW.
    assert p.extra_memory_bytes == pytest.approx(4096 * 128256 * 2 + 4096 * 4096 * 4 + 128256 * 4096 * 4)


def test_wave_quantization_and_memory_bound_phases():
    gpu = cost.GPUS["H100"]
    full = cost.Phase("x", flops=1e12, tiles=gpu.sms)
    ragged = cost.Phase("x", flops=1e12, tiles=gpu.sms + 1)
    assert ragged.predict(gpu) == pytest.approx(2 * full.predict(gpu) * gpu.sms / (gpu.sms + 1))
    memory = cost.Phase("x", flops=1.0, hbm_bytes=3.35e12)
    assert memory.predict(gpu) == pytest.approx(1e3)


@pytest.mark.parametrize("kwargs,name", [
    (dict(mode="inference"), "mode"), (dict(design="magic"), "design"), (dict(gpu="V100"), "gpu"),
])
def test_bad_arguments_are_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        cost.predict(1024, 64, 1000, **kwargs)
