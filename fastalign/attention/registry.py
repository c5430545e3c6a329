"""Packed attention backends registered with transformers' ``AttentionInterface``.

Each backend is registered under ``fastalign_<name>``. With a packed forward active (the
``PackedAttention`` travels as the ``fastalign_packed`` keyword transformers forwards to every
attention call) it runs the packed computation; otherwise it hands the call to the built-in
implementation it mirrors, so the same model still generates normally. The matching mask
function (``AttentionMaskInterface``) returns ``None`` during a packed forward: transformers'
mask code reads restarted position ids as new sequences, which would cut R off from its prompt.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from fastalign.attention import kernels, ulysses
from fastalign.attention.metadata import PackedAttention

logger = logging.getLogger("fastalign")
PREFIX = "fastalign_"
PACKED_KWARG = "fastalign_packed"
_packed_forward: contextvars.ContextVar[bool] = contextvars.ContextVar("fastalign_packed_forward", default=False)


@dataclass(frozen=True)
class Backend:
    """A packed attention backend and what it can do."""

    name: str
    compute: Callable
    fallback: str  # transformers' built-in implementation used outside packed forwards
    softcap: bool  # attention-logit softcap (Gemma2)
    sliding_window: bool
    dropout: bool
    cuda_only: bool
    cpu_backward: bool
    installed: Callable[[], bool] = lambda: True
    auto_on_cpu: bool = True  # picked by "auto" on CPU (flex is unfused, hence slow, there)

    def unsupported(self, requirements: ModelRequirements, device: torch.device, needs_grad: bool) -> str | None:
        """Why this backend cannot run the model here, or ``None`` if it can."""
        if not self.installed():
            return "not installed"
        if self.cuda_only and device.type != "cuda":
            return "needs a CUDA device"
        if needs_grad and device.type == "cpu" and not self.cpu_backward:
            return "has no backward on CPU"
        if requirements.softcap and not self.softcap:
            return "cannot apply the attention logit softcap"
        if requirements.sliding_window and not self.sliding_window:
            return "has no sliding-window support"
        if requirements.dropout and not self.dropout:
            return "has no attention dropout"
        return None


@dataclass(frozen=True)
class ModelRequirements:
    softcap: bool
    sliding_window: bool
    dropout: bool

    @classmethod
    def of(cls, config) -> ModelRequirements:
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        layer_types = getattr(text, "layer_types", None) or ()
        sliding = getattr(text, "sliding_window", None) is not None and (
            not layer_types or "sliding_attention" in layer_types
        )
        if getattr(text, "use_sliding_window", True) is False:
            sliding = False
        return cls(
            softcap=getattr(text, "attn_logit_softcapping", None) is not None,
            sliding_window=sliding,
            dropout=float(getattr(text, "attention_dropout", 0.0) or 0.0) > 0,
        )


def _has_module(name: str) -> Callable[[], bool]:
    return lambda: importlib.util.find_spec(name) is not None


BACKENDS: dict[str, Backend] = {
    backend.name: backend
    for backend in (
        # Order = preference of the "auto" choice.
        Backend("flash", kernels.flash_packed, "flash_attention_2", softcap=True, sliding_window=True,
                dropout=True, cuda_only=True, cpu_backward=False, installed=_has_module("flash_attn")),
        Backend("torch_varlen", kernels.torch_varlen_packed, "sdpa", softcap=False, sliding_window=True,
                dropout=False, cuda_only=True, cpu_backward=False,
                installed=lambda: bool(kernels.torch_varlen_signature())),
        Backend("flex", kernels.flex_packed, "sdpa", softcap=True, sliding_window=True, dropout=False,
                cuda_only=False, cpu_backward=False, auto_on_cpu=False),
        Backend("sdpa", kernels.sdpa_packed, "sdpa", softcap=False, sliding_window=True, dropout=True,
                cuda_only=False, cpu_backward=True),
        Backend("eager", kernels.eager_packed, "eager", softcap=True, sliding_window=True, dropout=True,
                cuda_only=False, cpu_backward=True),
    )
}


def _attention_function(backend: Backend) -> Callable:
    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        meta: PackedAttention | None = kwargs.pop(PACKED_KWARG, None)
        if meta is None:
            use_eager = backend.fallback == "eager" or kwargs.get("softcap") is not None
            builtin = _model_eager(module) if use_eager else ALL_ATTENTION_FUNCTIONS[backend.fallback]
            return builtin(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
        if query.shape[0] != 1 or query.shape[2] != meta.local_tokens:
            raise ValueError(f"packed attention expects one row of {meta.local_tokens} tokens, got {tuple(query.shape)}")
        meta.calls += 1
        if scaling is None:
            scaling = query.shape[-1] ** -0.5
        group = meta.sequence_parallel
        if group is not None:  # Ulysses: own tokens x all heads -> all tokens x own heads
            query, key, value = (ulysses.heads_to_sequence(states, group) for states in (query, key, value))
        out = backend.compute(query, key, value, meta, scaling=scaling, dropout=dropout,
                              sliding_window=kwargs.get("sliding_window"), softcap=kwargs.get("softcap"))
        if group is not None:
            out = ulysses.sequence_to_heads(out, group)
        return out, None

    attention.__name__ = f"{PREFIX}{backend.name}_attention"
    return attention


def _model_eager(module) -> Callable:
    """The model file's own eager attention (Gemma2's applies its softcap), Llama's otherwise."""
    import sys

    own = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    if own is not None:
        return own
    from transformers.models.llama.modeling_llama import eager_attention_forward

    return eager_attention_forward


def _mask_function(backend: Backend) -> Callable:
    def mask(*args, **kwargs):
        if _packed_forward.get():
            return None
        return ALL_MASK_ATTENTION_FUNCTIONS[backend.fallback](*args, **kwargs)

    return mask


def register_backends() -> None:
    """Register every backend with transformers (idempotent)."""
    for backend in BACKENDS.values():
        name = PREFIX + backend.name
        if name not in ALL_ATTENTION_FUNCTIONS:
            AttentionInterface.register(name, _attention_function(backend))
            AttentionMaskInterface.register(name, _mask_function(backend))


def select_backend(config, device: torch.device, *, requested: str = "auto", needs_grad: bool = True) -> Backend:
    """The backend to use for ``config`` on ``device``: ``requested`` if it can, else the best.

    Raises ``ValueError`` naming why when the requested backend (or every backend) cannot.
    """
    requirements = ModelRequirements.of(config)
    if requested != "auto":
        if requested not in BACKENDS:
            hint = " (a transformers built-in: it would let R attend to C)" if requested in ALL_ATTENTION_FUNCTIONS else ""
            raise ValueError(f"attention must be 'auto' or one of {tuple(BACKENDS)}, got {requested!r}{hint}")
        reason = BACKENDS[requested].unsupported(requirements, device, needs_grad)
        if reason:
            raise ValueError(f"attention backend {requested!r} cannot run this model on {device.type}: it {reason}")
        return BACKENDS[requested]
    reasons = {}
    for backend in BACKENDS.values():
        reason = backend.unsupported(requirements, device, needs_grad)
        if reason is None and device.type == "cpu" and not backend.auto_on_cpu:
            reason = "is not chosen automatically on CPU"
        if reason is None:
            logger.info("fastalign packed attention: %s (on %s)", backend.name, device.type)
            return backend
        reasons[backend.name] = reason
    raise ValueError(f"no packed attention backend can run this model on {device.type}: {reasons}")


def is_packed_backend(implementation: str | None) -> bool:
    return bool(implementation) and implementation.startswith(PREFIX) and implementation[len(PREFIX):] in BACKENDS


@contextlib.contextmanager
def packed_forward():
    """Mark a forward as packed so fastalign's mask functions build no transformers mask."""
    token = _packed_forward.set(True)
    try:
        yield
    finally:
        _packed_forward.reset(token)
