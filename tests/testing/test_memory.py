"""AllocationRecorder (fastalign/testing/memory.py): what counts as an allocation, the largest
one, and the peak of live bytes."""

from __future__ import annotations

import gc

import torch

from fastalign.testing import AllocationRecorder


def test_the_largest_allocation_and_its_op():
    with AllocationRecorder() as recorder:
        a = torch.ones(10, 20)
        b = a.sum(0)
    assert recorder.largest_numel == 200
    assert recorder.largest_op == "aten.ones.default"
    assert b.shape == (20,)


def test_views_in_place_ops_and_earlier_tensors_allocate_nothing():
    x = torch.ones(1000)
    with AllocationRecorder(record_shapes=True) as recorder:
        x.view(10, 100)
        x[:5]
        x.t()
        x.add_(1.0)
    assert recorder.largest_numel == 0 and recorder.peak_bytes == 0 and recorder.live_bytes == 0
    assert recorder.shapes == []


def test_peak_of_live_bytes_counts_each_storage_once():
    with AllocationRecorder() as recorder:
        a = torch.empty(1000, dtype=torch.float64)  # 8000 bytes
        a_view = a[:10]
        b = torch.empty(250, dtype=torch.float64)  # 2000 bytes: peak 10000
        del a, a_view
        gc.collect()
        c = torch.empty(500, dtype=torch.float64)  # 4000 bytes: live 6000, below the peak
        assert recorder.live_bytes == 6000
    assert recorder.peak_bytes == 10_000
    assert recorder.largest_numel == 1000
    del b, c


def test_record_shapes_lists_every_output():
    with AllocationRecorder(record_shapes=True) as recorder:
        a = torch.zeros(2, 3)
        torch.cat([a, a])
    assert recorder.shapes == [("aten.zeros.default", (2, 3)), ("aten.cat.default", (4, 3))]
    with AllocationRecorder() as quiet:
        torch.zeros(2, 3)
    assert quiet.shapes == [] and quiet.largest_numel == 6
