"""Running the trainers under ``torchrun`` with PyTorch's own engines: DDP or FSDP2.

Nothing here is a distributed engine: it reads torchrun's environment, starts the process group
(NCCL on CUDA, gloo on CPU), wraps the trained module with ``DistributedDataParallel`` or
``fully_shard`` (each decoder layer, then the root: embeddings, final norm and LM head — tied
embeddings — in one group), and gives the loop three small collectives: a global sum (pair and
token counts, metrics), the assignment of a step's packed rows to ranks by tokens, and the
gradient-sync switch for accumulation.

Losses are divided by the global count of the optimizer step and multiplied by the world size
before backward: DDP and FSDP2 average gradients over ranks, so the reduced gradient is the sum
over every rank's pairs divided by the global count — the single-process gradient of the same
global batch, whatever the split.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from fastalign.attention import SequenceParallelGroup

STRATEGIES = ("auto", "none", "ddp", "fsdp2")
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistributedEnv:
    """Where this process sits: ``strategy`` is ``none`` for a single-process run."""

    strategy: str = "none"
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.strategy != "none"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _fsdp2():
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:
        return None
    return fully_shard


def check_strategy(strategy: str, *, environ: dict[str, str] | None = None) -> tuple[str, dict[str, int]]:
    """The strategy to use and torchrun's ranks, or a ``ValueError`` saying what is wrong.

    Reads only the environment: nothing is started, so a bad configuration fails before any work.
    """
    environ = os.environ if environ is None else environ
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    launched = any(name in environ for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"))
    missing = [name for name in TORCHRUN_ENV if name not in environ]
    if not launched:
        if strategy in ("ddp", "fsdp2"):
            raise ValueError(
                f"strategy={strategy!r} needs torchrun: the environment variables {missing} are not set; launch with "
                "`torchrun --nproc-per-node N -m fastalign train ...` (or set strategy='none' for one process)"
            )
        return "none", {"rank": 0, "world_size": 1, "local_rank": 0}
    if missing:
        raise ValueError(f"incomplete torchrun environment: {missing} not set (RANK, WORLD_SIZE, LOCAL_RANK, "
                         "MASTER_ADDR and MASTER_PORT are all needed)")
    try:
        ranks = {"rank": int(environ["RANK"]), "world_size": int(environ["WORLD_SIZE"]),
                 "local_rank": int(environ["LOCAL_RANK"])}
    except ValueError as error:
        raise ValueError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers: {error}") from None
    if not 0 <= ranks["rank"] < ranks["world_size"]:
        raise ValueError(f"RANK={ranks['rank']} is outside WORLD_SIZE={ranks['world_size']}")
    if strategy == "none" and ranks["world_size"] > 1:
        raise ValueError(f"strategy='none' under torchrun with WORLD_SIZE={ranks['world_size']} would train "
                         "independent copies; use strategy='ddp' or 'fsdp2'")
    if strategy == "auto":
        strategy = "ddp" if ranks["world_size"] > 1 else "none"
    if strategy == "fsdp2" and _fsdp2() is None:
        raise ValueError(f"strategy='fsdp2' needs torch.distributed.fsdp.fully_shard, missing in torch {torch.__version__}")
    if strategy != "none" and not dist.is_available():
        raise ValueError(f"strategy={strategy!r}: this torch build has no torch.distributed")
    return strategy, ranks


def wants_cuda(device_name: str) -> bool:
    """Whether the ``device`` option means CUDA (``"auto"``: when a GPU is visible)."""
    return torch.cuda.is_available() if device_name == "auto" else device_name.startswith("cuda")


def resolve_device(name: str) -> torch.device:
    """The single-process device of the ``device`` option; ``ValueError`` when it is absent."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise ValueError(f"device={name!r}: no such CUDA device is visible (use device=cpu or auto)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={name!r}: MPS is not available on this machine (use device=cpu or auto)")
    return device


def round_to_world(config, name: str, world: int, what: str, *, main: bool):
    """``config`` with the per-step count ``name`` rounded up to a multiple of ``world`` (each
    rank takes the same share), said in one log line; ``config`` itself when it divides."""
    value = getattr(config, name)
    if value % world == 0:
        return config
    rounded = -(-value // world) * world
    share = rounded // world
    if main:
        print(f"fastalign: {name}={value} rounded up to {rounded}, a multiple of the {world} processes "
              f"(each process takes {share} {what if share > 1 else what.rstrip('s')} per step)",
              file=sys.stderr, flush=True)
    return dataclasses.replace(config, **{name: rounded})


def setup(strategy: str, device_name: str) -> tuple[DistributedEnv, torch.device]:
    """Check the configuration, pick this rank's device and start the process group."""
    strategy, ranks = check_strategy(strategy)
    if strategy == "none":
        return DistributedEnv(), resolve_device(device_name)
    if wants_cuda(device_name):
        if not torch.cuda.is_available() or ranks["local_rank"] >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK={ranks['local_rank']} has no CUDA device "
                             f"({torch.cuda.device_count() if torch.cuda.is_available() else 0} visible)")
        device = torch.device("cuda", ranks["local_rank"])
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    if dist.get_world_size() != ranks["world_size"]:
        raise ValueError(f"process group has {dist.get_world_size()} ranks, WORLD_SIZE says {ranks['world_size']}")
    return DistributedEnv(strategy, **ranks), device


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The decoder layers of a (PEFT-wrapped) HF causal LM or sequence classifier."""
    from fastalign.models.backbone import backbone

    layers = getattr(backbone(model), "layers", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise ValueError(f"cannot find the decoder layers of {type(model).__name__} to shard")
    return list(layers)


def shard(module: nn.Module, hf_model: nn.Module, *, offload: bool = False) -> nn.Module:
    """``fully_shard`` each decoder layer of ``hf_model``, then ``module`` (its root) in place.
    ``offload``: keep the shards in CPU memory between uses (FSDP2's ``CPUOffloadPolicy``)."""
    from torch.distributed.device_mesh import init_device_mesh

    fully_shard = _fsdp2()
    device_type = next(module.parameters()).device.type
    mesh = init_device_mesh(device_type, (dist.get_world_size(),))
    options: dict = {"mesh": mesh}
    if offload:
        from torch.distributed.fsdp import CPUOffloadPolicy

        options["offload_policy"] = CPUOffloadPolicy()
    for layer in decoder_layers(hf_model):
        fully_shard(layer, **options)
    fully_shard(module, **options)
    return module


def wrap(module: nn.Module, env: DistributedEnv, device: torch.device) -> nn.Module:
    """The module the loop calls: DDP around ``module``, or ``module`` sharded in place."""
    if env.strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
    if env.strategy == "fsdp2":
        return shard(module, module.model)
    return module


@contextlib.contextmanager
def gradient_sync(wrapped: nn.Module, env: DistributedEnv, enabled: bool):
    """Reduce gradients in this backward only when ``enabled`` (the step's last row)."""
    if env.strategy == "ddp" and not enabled:
        with wrapped.no_sync():
            yield
        return
    if env.strategy == "fsdp2":
        wrapped.set_requires_gradient_sync(enabled)
    yield


def global_sum(values: list[float], env: DistributedEnv, group=None) -> list[float]:
    """Element-wise sum over ranks (float64 on the CPU for gloo, on the device for NCCL);
    ``group``: only over that process group (the data-parallel replicas under sequence parallelism)."""
    if not env.enabled:
        return list(values)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, group=group)
    return tensor.tolist()


@dataclass(frozen=True)
class ParallelLayout:
    """How the ranks split the work: each packed row is shared by the ``sequence_parallel``
    group's ranks (consecutive ranks), and ``replicas`` such groups train on different rows
    (data parallelism; this rank is in replica ``replica``). ``replica_group``: the ranks
    holding the same slice in every replica — counts and metrics are summed over it, so each
    row counts once. Gradients are reduced by DDP over the whole world: with the loss scaled by
    the world size, that is the sum of every rank's part — the full gradient of every row."""

    sequence_parallel: SequenceParallelGroup | None = None
    replica: int = 0
    replicas: int = 1
    replica_group: object | None = None  # None: the world


def replica_count(world: int, sequence_parallel: int) -> int:
    """Data-parallel replicas of ``world`` processes in groups of ``sequence_parallel``."""
    if world % sequence_parallel:
        raise ValueError(f"sequence_parallel={sequence_parallel} needs a multiple of {sequence_parallel} processes "
                         f"(torchrun --nproc-per-node), got {world}")
    return world // sequence_parallel


def parallel_layout(env: DistributedEnv, sequence_parallel: int) -> ParallelLayout:
    """Build the sequence-parallel and replica process groups (every rank calls this, in the
    same order, right after ``setup``)."""
    replicas = replica_count(env.world_size, sequence_parallel)
    if sequence_parallel == 1:
        return ParallelLayout(None, env.rank, replicas, None)
    # new_group is collective: every rank creates every group, then keeps its own.
    rows = [dist.new_group([replica * sequence_parallel + i for i in range(sequence_parallel)])
            for replica in range(replicas)]
    slices = [dist.new_group([replica * sequence_parallel + i for replica in range(replicas)])
              for i in range(sequence_parallel)]
    replica, position = divmod(env.rank, sequence_parallel)
    group = SequenceParallelGroup(rows[replica], position, sequence_parallel)
    return ParallelLayout(group, replica, replicas, slices[position])


def assign_rows(token_counts: list[int], world_size: int) -> list[list[int]]:
    """Split a step's rows over ranks: the same number of rows each, tokens balanced.

    Longest row first to the rank with the fewest tokens among those with room (ties: lower
    rank), a deterministic function of the counts, so every rank computes the same split and a
    resumed run repeats it. Returns each rank's row indices in their original order.
    """
    if world_size < 1 or len(token_counts) % world_size:
        raise ValueError(f"{len(token_counts)} rows cannot be split evenly over {world_size} ranks")
    per_rank = len(token_counts) // world_size
    loads = [0] * world_size
    assigned: list[list[int]] = [[] for _ in range(world_size)]
    for index in sorted(range(len(token_counts)), key=lambda i: (-token_counts[i], i)):
        rank = min((r for r in range(world_size) if len(assigned[r]) < per_rank), key=lambda r: (loads[r], r))
        assigned[rank].append(index)
        loads[rank] += token_counts[index]
    return [sorted(indices) for indices in assigned]


@torch.no_grad()
def broadcast_weights(module: nn.Module, env: DistributedEnv) -> None:
    """Rank 0's parameters and buffers on every rank (FSDP2 shards whatever each rank holds, so
    a randomly initialized model must start identical everywhere; DDP would do this itself)."""
    if not env.enabled:
        return
    seen = set()
    for tensor in list(module.parameters()) + list(module.buffers()):
        if id(tensor) not in seen:  # tied weights once
            seen.add(id(tensor))
            dist.broadcast(tensor.data, src=0)


def barrier(env: DistributedEnv) -> None:
    if env.enabled:
        dist.barrier()


def broadcast_object(value, env: DistributedEnv):
    """Rank 0's ``value`` on every rank."""
    if not env.enabled:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]
