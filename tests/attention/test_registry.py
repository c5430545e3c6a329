"""The packed attention backend registry (fastalign/attention/registry.py): what it registers
with transformers, what each backend declares it can do, how a backend is chosen (and why
one is refused), and the functions it registers: the packed computation during a packed
forward, the built-in implementation otherwise."""

from __future__ import annotations

import dataclasses
import sys
import types
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers import Gemma2Config, LlamaConfig
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from fastalign.attention import (
    BACKENDS,
    PACKED_KWARG,
    PREFIX,
    ModelRequirements,
    PackedAttention,
    is_packed_backend,
    kernels,
    packed_forward,
    register_backends,
    registry,
    select_backend,
)
from fastalign.packing import pack_preference_examples

CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # select_backend only reads the device type
NAMES = ("flash", "torch_varlen", "flex", "sdpa", "eager")


def _plain(**overrides) -> SimpleNamespace:
    """A text config with no softcap, no sliding window, no dropout, then ``overrides``."""
    return SimpleNamespace(**{"attn_logit_softcapping": None, "sliding_window": None, "attention_dropout": 0.0,
                              **overrides})


def _installed(monkeypatch, **installed: bool) -> None:
    """Pretend the optional packages of the named backends are (not) installed."""
    for name, value in installed.items():
        monkeypatch.setitem(BACKENDS, name, dataclasses.replace(BACKENDS[name], installed=lambda value=value: value))


# ---------------------------------------------------------------- what is registered


def test_the_backends_in_preference_order_with_their_capabilities():
    assert tuple(BACKENDS) == NAMES
    assert all(backend.name == name for name, backend in BACKENDS.items())
    table = {name: (b.fallback, b.softcap, b.sliding_window, b.dropout, b.cuda_only, b.cpu_backward, b.auto_on_cpu)
             for name, b in BACKENDS.items()}
    assert table == {
        #                fallback          softcap sliding dropout cuda   cpu_bwd auto_on_cpu
        "flash": ("flash_attention_2", True, True, True, True, False, True),
        "torch_varlen": ("sdpa", False, True, False, True, False, True),
        "flex": ("sdpa", True, True, False, False, False, False),
        "sdpa": ("sdpa", False, True, True, False, True, True),
        "eager": ("eager", True, True, True, False, True, True),
    }
    computes = {name: b.compute for name, b in BACKENDS.items()}
    assert computes == {"flash": kernels.flash_packed, "torch_varlen": kernels.torch_varlen_packed,
                        "flex": kernels.flex_packed, "sdpa": kernels.sdpa_packed, "eager": kernels.eager_packed}
    assert (PREFIX, PACKED_KWARG) == ("fastalign_", "fastalign_packed")


def test_register_backends_registers_each_name_once():
    register_backends()
    names = [PREFIX + name for name in NAMES]
    functions = [ALL_ATTENTION_FUNCTIONS[name] for name in names]
    masks = [ALL_MASK_ATTENTION_FUNCTIONS[name] for name in names]
    assert [f.__name__ for f in functions] == [f"fastalign_{name}_attention" for name in NAMES]
    register_backends()  # idempotent: the registered functions are kept, not replaced
    assert [ALL_ATTENTION_FUNCTIONS[name] for name in names] == functions
    assert [ALL_MASK_ATTENTION_FUNCTIONS[name] for name in names] == masks


@pytest.mark.parametrize("implementation, expected", [
    ("fastalign_sdpa", True), ("fastalign_eager", True), ("fastalign_flash", True),
    ("fastalign_torch_varlen", True), ("fastalign_flex", True),
    ("sdpa", False), ("eager", False), ("fastalign_", False), ("fastalign_paged", False),
    ("xfastalign_sdpa", False), ("", False), (None, False),
])
def test_is_packed_backend(implementation, expected):
    assert is_packed_backend(implementation) is expected


# ---------------------------------------------------------------- what a model needs


def test_model_requirements_of_real_configs():
    assert ModelRequirements.of(LlamaConfig()) == ModelRequirements(softcap=False, sliding_window=False, dropout=False)
    assert ModelRequirements.of(Gemma2Config()) == ModelRequirements(softcap=True, sliding_window=True, dropout=False)
    assert ModelRequirements.of(LlamaConfig(attention_dropout=0.1)).dropout is True


@pytest.mark.parametrize("overrides, sliding", [
    ({}, False),
    ({"sliding_window": 64}, True),  # no layer types: every layer slides
    ({"sliding_window": 64, "layer_types": ["full_attention", "sliding_attention"]}, True),
    ({"sliding_window": 64, "layer_types": ["full_attention", "full_attention"]}, False),
    ({"sliding_window": 64, "use_sliding_window": False}, False),  # Qwen2's switch
    ({"sliding_window": None, "layer_types": ["sliding_attention"]}, False),
])
def test_model_requirements_sliding_window(overrides, sliding):
    assert ModelRequirements.of(_plain(**overrides)).sliding_window is sliding


def test_model_requirements_read_the_text_config_of_a_composite_config():
    text = _plain(attn_logit_softcapping=30.0, attention_dropout=0.25)
    composite = SimpleNamespace(get_text_config=lambda: text, attn_logit_softcapping=None, attention_dropout=0.0)
    assert ModelRequirements.of(composite) == ModelRequirements(softcap=True, sliding_window=False, dropout=True)


def test_unsupported_names_the_first_reason(monkeypatch):
    _installed(monkeypatch, flash=False)
    nothing = ModelRequirements(False, False, False)
    everything = ModelRequirements(True, True, True)
    assert BACKENDS["flash"].unsupported(nothing, CUDA, True) == "not installed"
    _installed(monkeypatch, flash=True, torch_varlen=True)
    assert BACKENDS["flash"].unsupported(everything, CUDA, True) is None
    assert BACKENDS["torch_varlen"].unsupported(nothing, CPU, False) == "needs a CUDA device"
    assert BACKENDS["torch_varlen"].unsupported(ModelRequirements(True, False, False), CUDA, True) == \
        "cannot apply the attention logit softcap"
    assert BACKENDS["torch_varlen"].unsupported(ModelRequirements(False, True, True), CUDA, True) == \
        "has no attention dropout"
    assert BACKENDS["flex"].unsupported(nothing, CPU, True) == "has no backward on CPU"
    assert BACKENDS["flex"].unsupported(ModelRequirements(True, True, False), CPU, False) is None
    assert BACKENDS["flex"].unsupported(nothing, CUDA, True) is None  # the CPU-backward limit is CPU only
    assert BACKENDS["sdpa"].unsupported(ModelRequirements(True, False, False), CPU, True) == \
        "cannot apply the attention logit softcap"
    assert BACKENDS["eager"].unsupported(everything, CPU, True) is None
    sliding_only = dataclasses.replace(BACKENDS["eager"], sliding_window=False)
    assert sliding_only.unsupported(everything, CPU, True) == "has no sliding-window support"


# ---------------------------------------------------------------- choosing a backend


def test_auto_on_cpu_picks_sdpa_then_eager_for_a_softcap():
    assert select_backend(LlamaConfig(), CPU) is BACKENDS["sdpa"]
    # flex runs on CPU without gradients, but "auto" never picks it there (unfused, slow).
    assert select_backend(LlamaConfig(), CPU, needs_grad=False) is BACKENDS["sdpa"]
    assert select_backend(Gemma2Config(), CPU) is BACKENDS["eager"]


def test_auto_on_cuda_follows_the_preference_order(monkeypatch):
    _installed(monkeypatch, flash=True, torch_varlen=True)
    assert select_backend(LlamaConfig(), CUDA) is BACKENDS["flash"]
    _installed(monkeypatch, flash=False)
    assert select_backend(LlamaConfig(), CUDA) is BACKENDS["torch_varlen"]
    assert select_backend(Gemma2Config(), CUDA) is BACKENDS["flex"]  # softcap: not torch_varlen
    _installed(monkeypatch, torch_varlen=False)
    assert select_backend(LlamaConfig(), CUDA) is BACKENDS["flex"]
    assert select_backend(LlamaConfig(attention_dropout=0.1), CUDA) is BACKENDS["sdpa"]  # flex has no dropout


@pytest.mark.parametrize("name", ["sdpa", "eager"])
def test_each_cpu_backend_can_be_requested_by_name(name):
    assert select_backend(LlamaConfig(), CPU, requested=name) is BACKENDS[name]


def test_each_backend_is_chosen_by_name_where_it_can_run(monkeypatch):
    _installed(monkeypatch, flash=True, torch_varlen=True)
    for name in NAMES:
        assert select_backend(LlamaConfig(), CUDA, requested=name) is BACKENDS[name]
    assert select_backend(LlamaConfig(), CPU, requested="flex", needs_grad=False) is BACKENDS["flex"]


def test_an_unknown_name_is_refused_with_the_valid_choices():
    choices = "('flash', 'torch_varlen', 'flex', 'sdpa', 'eager')"
    with pytest.raises(ValueError) as error:
        select_backend(LlamaConfig(), CPU, requested="no_such_backend")
    assert str(error.value) == f"attention must be 'auto' or one of {choices}, got 'no_such_backend'"
    # A transformers built-in is named as such: it would not apply the packing rule.
    with pytest.raises(ValueError) as error:
        select_backend(LlamaConfig(), CPU, requested="flash_attention_2")
    assert str(error.value) == (f"attention must be 'auto' or one of {choices}, got 'flash_attention_2' "
                                "(a transformers built-in: it would let R attend to C)")


def test_a_requested_backend_that_cannot_run_says_why(monkeypatch):
    _installed(monkeypatch, flash=False, torch_varlen=True)
    cases = [
        ("flash", LlamaConfig(), CUDA, "not installed"),
        ("torch_varlen", LlamaConfig(), CPU, "needs a CUDA device"),
        ("flex", LlamaConfig(), CPU, "has no backward on CPU"),
        ("sdpa", Gemma2Config(), CPU, "cannot apply the attention logit softcap"),
        ("flex", LlamaConfig(attention_dropout=0.1), CUDA, "has no attention dropout"),
    ]
    for name, config, device, reason in cases:
        with pytest.raises(ValueError) as error:
            select_backend(config, device, requested=name)
        assert str(error.value) == f"attention backend '{name}' cannot run this model on {device.type}: it {reason}"


def test_when_no_backend_can_run_every_reason_is_listed(monkeypatch):
    monkeypatch.setitem(BACKENDS, "eager", dataclasses.replace(BACKENDS["eager"], softcap=False))
    _installed(monkeypatch, flash=False, torch_varlen=True)
    with pytest.raises(ValueError) as error:
        select_backend(Gemma2Config(), CPU)
    reasons = {"flash": "not installed", "torch_varlen": "needs a CUDA device", "flex": "has no backward on CPU",
               "sdpa": "cannot apply the attention logit softcap", "eager": "cannot apply the attention logit softcap"}
    assert str(error.value) == f"no packed attention backend can run this model on cpu: {reasons}"
    with pytest.raises(ValueError) as error:
        select_backend(Gemma2Config(), CPU, needs_grad=False)
    reasons["flex"] = "is not chosen automatically on CPU"
    assert str(error.value) == f"no packed attention backend can run this model on cpu: {reasons}"


# ---------------------------------------------------------------- the registered functions


def _meta_and_qkv(seed=0):
    (row,) = pack_preference_examples([[1, 2], [3]], [[4, 5], [6]], [[7], [8, 9]], token_budget=64)
    meta = PackedAttention.from_batch(row)
    generator = torch.Generator().manual_seed(seed)
    query = torch.randn(1, 4, meta.num_tokens, 8, generator=generator, dtype=torch.float64)
    key = torch.randn(1, 2, meta.num_tokens, 8, generator=generator, dtype=torch.float64)
    value = torch.randn(1, 2, meta.num_tokens, 8, generator=generator, dtype=torch.float64)
    return meta, query, key, value


@pytest.mark.parametrize("name", ["eager", "sdpa"])
def test_during_a_packed_forward_the_backend_computes_and_counts(name):
    register_backends()
    attention = ALL_ATTENTION_FUNCTIONS[PREFIX + name]
    meta, query, key, value = _meta_and_qkv()
    out, weights = attention(nn.Module(), query, key, value, None, **{PACKED_KWARG: meta})
    assert weights is None and out.shape == (1, 9, 4, 8) and meta.calls == 1
    expected = BACKENDS[name].compute(query, key, value, meta, scaling=8 ** -0.5, dropout=0.0,
                                      sliding_window=None, softcap=None)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)  # scaling=None means head_dim ** -0.5
    out, _ = attention(nn.Module(), query, key, value, None, scaling=0.5, sliding_window=2, **{PACKED_KWARG: meta})
    assert meta.calls == 2
    expected = BACKENDS[name].compute(query, key, value, meta, scaling=0.5, dropout=0.0, sliding_window=2,
                                      softcap=None)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    # Token 4 (R of example 0, position 2) attends to P0 and itself only, and with the window
    # of 2 positions not to P0's position 0: keys 1 and 4. Query head h reads key/value head
    # h // 2 (grouped-query attention).
    keys, values = key[0].repeat_interleave(2, 0), value[0].repeat_interleave(2, 0)
    for head in range(4):
        weights = torch.softmax(keys[head, [1, 4]] @ query[0, head, 4] * 0.5, dim=0)
        torch.testing.assert_close(out[0, 4, head], weights @ values[head, [1, 4]], rtol=1e-12, atol=1e-12)


def test_a_packed_call_with_the_wrong_row_is_refused():
    register_backends()
    meta, query, key, value = _meta_and_qkv()
    attention = ALL_ATTENTION_FUNCTIONS[PREFIX + "eager"]
    with pytest.raises(ValueError, match=r"packed attention expects one row of 9 tokens, got \(1, 4, 8, 8\)"):
        attention(nn.Module(), query[:, :, :8], key[:, :, :8], value[:, :, :8], None, **{PACKED_KWARG: meta})
    with pytest.raises(ValueError, match=r"one row of 9 tokens, got \(2, 4, 9, 8\)"):
        attention(nn.Module(), query.expand(2, -1, -1, -1), key, value, None, **{PACKED_KWARG: meta})
    assert meta.calls == 0


def test_outside_a_packed_forward_the_builtin_runs(monkeypatch):
    register_backends()
    seen = []

    def builtin_sdpa(module, query, key, value, attention_mask, **kwargs):
        seen.append((module, attention_mask, kwargs))
        return "builtin-out", "builtin-weights"

    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS, "sdpa", builtin_sdpa)
    _, query, key, value = _meta_and_qkv()
    module, mask = nn.Module(), torch.ones(1, 1, 9, 9, dtype=torch.bool)
    for name in ("sdpa", "flex", "torch_varlen"):  # every backend whose fallback is sdpa
        result = ALL_ATTENTION_FUNCTIONS[PREFIX + name](module, query, key, value, mask, scaling=0.25, dropout=0.0,
                                                        sliding_window=4)
        assert result == ("builtin-out", "builtin-weights")
    assert len(seen) == 3
    assert all(m is module and a is mask and k == {"scaling": 0.25, "dropout": 0.0, "sliding_window": 4}
               for m, a, k in seen)


def test_outside_a_packed_forward_eager_uses_the_model_files_own_eager(monkeypatch):
    register_backends()
    calls = []
    model_file = types.ModuleType("fake_modeling_file")

    def eager_attention_forward(module, query, key, value, attention_mask, **kwargs):
        calls.append(kwargs)
        return "own-eager", None

    model_file.eager_attention_forward = eager_attention_forward
    attention_class = type("FakeAttention", (nn.Module,), {"__module__": "fake_modeling_file"})
    monkeypatch.setitem(sys.modules, "fake_modeling_file", model_file)
    _, query, key, value = _meta_and_qkv()
    out = ALL_ATTENTION_FUNCTIONS[PREFIX + "eager"](attention_class(), query, key, value, None, scaling=0.5)
    assert out == ("own-eager", None) and calls == [{"scaling": 0.5, "dropout": 0.0}]
    # A softcap sends even an sdpa-fallback backend to the model's eager attention (sdpa has none).
    out = ALL_ATTENTION_FUNCTIONS[PREFIX + "sdpa"](attention_class(), query, key, value, None, softcap=30.0)
    assert out == ("own-eager", None) and calls[-1] == {"scaling": None, "dropout": 0.0, "softcap": 30.0}
    # A module whose file has no eager attention gets Llama's.
    from transformers.models.llama.modeling_llama import (
        eager_attention_forward as llama_eager,
    )

    assert registry._model_eager(nn.Linear(1, 1)) is llama_eager


def test_the_mask_functions_build_no_mask_during_a_packed_forward(monkeypatch):
    register_backends()
    seen = []
    monkeypatch.setitem(ALL_MASK_ATTENTION_FUNCTIONS, "sdpa", lambda *args, **kwargs: seen.append((args, kwargs)) or "sdpa-mask")
    monkeypatch.setitem(ALL_MASK_ATTENTION_FUNCTIONS, "eager", lambda *args, **kwargs: "eager-mask")
    sdpa_mask = ALL_MASK_ATTENTION_FUNCTIONS[PREFIX + "sdpa"]
    eager_mask = ALL_MASK_ATTENTION_FUNCTIONS[PREFIX + "eager"]
    assert sdpa_mask(1, cache_position=2) == "sdpa-mask" and seen == [((1,), {"cache_position": 2})]
    assert eager_mask() == "eager-mask"
    with packed_forward():
        assert sdpa_mask(1, cache_position=2) is None and eager_mask() is None
        with packed_forward():  # nested: still packed, and the outer context survives the inner exit
            assert sdpa_mask() is None
        assert eager_mask() is None
    assert eager_mask() == "eager-mask" and len(seen) == 1
    with pytest.raises(RuntimeError), packed_forward():
        raise RuntimeError("a failing forward")
    assert eager_mask() == "eager-mask", "the packed flag is reset when the forward raises"
