"""Multi-GPU and multi-machine training with PyTorch's own engine (DDP under ``torchrun``).

Nothing here schedules processes: ``torchrun`` starts one process per device and sets
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (plus ``MASTER_ADDR`` / ``MASTER_PORT``);
:func:`init_distributed` reads them, joins the process group (NCCL on CUDA, gloo on CPU) and
picks the process's device. A plain ``python`` run is a world of one and touches no process
group. For example, two GPUs on one machine::

    torchrun --nproc_per_node 2 -m sepbn.cli train configs/wflw_sepbn.yaml

Each process loads its own share of every epoch through a
:class:`~torch.utils.data.DistributedSampler` (reshuffled by ``set_epoch``), the model is
wrapped in :class:`~torch.nn.parallel.DistributedDataParallel`, which averages the gradients,
and only rank 0 writes checkpoints and logs. ``sync_bn`` converts every ``BatchNorm2d`` to
``SyncBatchNorm``, SepBN's shared inner normalization included (it is a plain
``nn.BatchNorm2d`` attribute of the layer); PyTorch's ``SyncBatchNorm`` only synchronizes
CUDA tensors, so it is refused for multi-process CPU runs.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator, Sequence, Sized
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, DistributedSampler, Sampler

from sepbn.errors import ConfigError

__all__ = [
    "DistributedContext",
    "EpochSampler",
    "all_reduce_sum",
    "available_devices",
    "barrier",
    "broadcast_buffers",
    "build_sampler",
    "build_train_sampler",
    "check_device",
    "cleanup_distributed",
    "convert_sync_batchnorm",
    "init_distributed",
    "resolve_device",
    "unwrap_model",
    "wrap_model",
]


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in the run.

    Attributes:
        rank: Global rank (0 for a single process).
        world_size: Number of processes.
        local_rank: Rank on this machine; the CUDA device index.
        device: The device this process trains on.
        backend: ``"nccl"`` or ``"gloo"`` in a multi-process run, else ``None``.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None

    @property
    def is_distributed(self) -> bool:
        """More than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes checkpoints, logs and evaluation files."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


def available_devices() -> list[str]:
    """The devices this machine can run on: ``"cpu"``, each ``"cuda:<i>"``, ``"mps"``."""
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a :class:`torch.device`, once it is known that this machine has it.

    Every entry point that puts tensors on a user-chosen device calls this first, so a
    missing GPU is reported as such, not as whatever fails later (a checkpoint that "cannot
    be read", a driver assertion).

    Raises:
        ConfigError: Not a device name, or a device this machine lacks; the message lists
            :func:`available_devices`.
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(
            f"unknown device {device!r}; valid: 'cpu', 'cuda', 'cuda:<i>', 'mps'"
        ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device {str(dev)!r}: CUDA is not available on this machine (no CUDA GPU "
                f"visible, or torch built without CUDA); available: {available_devices()}"
            )
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ConfigError(
                f"device {str(dev)!r}: this machine has {count} CUDA device(s); "
                f"available: {available_devices()}"
            )
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(
            f"device 'mps' is not available on this machine; available: {available_devices()}"
        )
    return dev


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """The training device for a config's ``train.device``.

    Args:
        name: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or
            ``"cuda:<i>"``.
        local_rank: In a multi-process run, ``"auto"`` and ``"cuda"`` mean GPU ``local_rank``.

    Raises:
        ValueError: Unknown name, or a device this machine lacks (see :func:`check_device`).
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        try:
            return check_device(torch.device("cuda", local_rank) if name == "cuda" else name)
        except ValueError as exc:
            raise ConfigError(f"train.device={name!r}: {exc}") from None
    raise ConfigError(f"unknown train.device {name!r}; valid: 'auto', 'cpu', 'cuda', 'cuda:<i>'")


def init_distributed(
    device: str = "auto", backend: str | None = None, timeout_s: float = 1800.0
) -> DistributedContext:
    """Join the ``torchrun`` process group when there is one, and pick the device.

    Reads ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; with ``WORLD_SIZE`` unset or 1 it
    returns a single-process context without touching ``torch.distributed``. A process group
    that is already initialized (by the caller) is reused.

    Args:
        device: The config's ``train.device``.
        backend: ``"nccl"`` or ``"gloo"``; ``None`` = NCCL for CUDA, gloo for CPU.
        timeout_s: Collective-operation timeout.

    Returns:
        The context.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={world_size}")
    resolved = resolve_device(device, local_rank)
    if world_size == 1:
        return DistributedContext(device=resolved)
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    if not dist.is_initialized():
        backend = backend or ("nccl" if resolved.type == "cuda" else "gloo")
        dist.init_process_group(
            backend=backend,
            init_method="env://",
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
    return DistributedContext(rank, world_size, local_rank, resolved, dist.get_backend())


def cleanup_distributed(ctx: DistributedContext) -> None:
    """Leave the process group (a no-op for a single process)."""
    if ctx.is_distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistributedContext) -> None:
    """Wait for every process (a no-op for a single process)."""
    if ctx.is_distributed:
        if ctx.backend == "nccl":
            dist.barrier(device_ids=[ctx.device.index])
        else:
            dist.barrier()


def all_reduce_sum(value: torch.Tensor, ctx: DistributedContext) -> torch.Tensor:
    """Sum of ``value`` over all processes (``value`` itself for a single process)."""
    if not ctx.is_distributed:
        return value
    out = value.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def broadcast_buffers(model: nn.Module, ctx: DistributedContext) -> None:
    """Copy rank 0's buffers (BN running statistics, SepBN's τ) to every rank.

    DDP does this at the start of every forward, so after the last step of an epoch each
    rank still holds the statistics of its own last batch; calling this at the end of an
    epoch leaves every rank with rank 0's complete state (the one its checkpoint holds).
    """
    if not ctx.is_distributed:
        return
    for buffer in model.buffers():
        dist.broadcast(buffer.data, src=0)


def build_sampler(
    dataset: Dataset[Any], ctx: DistributedContext, seed: int, shuffle: bool = True
) -> DistributedSampler[Any]:
    """This process's share of every epoch; call ``set_epoch(epoch)`` before each epoch.

    Also used for a single process (a world of one): the order is then a function of
    ``(seed, epoch)`` only, which is what makes a resumed run repeat an uninterrupted one.
    Shuffling uniformly over the concatenated datasets samples each face with equal
    probability, i.e. each dataset in proportion to its size (CNT stage 1, Sec. IV).

    Args:
        dataset: The (concatenated) training set.
        ctx: The process's place in the run.
        seed: The run seed.
        shuffle: Reshuffle every epoch.

    Returns:
        The sampler (every process gets the same number of samples; DistributedSampler
        repeats a few when the size does not divide).
    """
    if not isinstance(dataset, Sized) or len(dataset) == 0:
        raise ValueError("the training set is empty")
    return DistributedSampler(
        dataset,
        num_replicas=ctx.world_size,
        rank=ctx.rank,
        shuffle=shuffle,
        seed=seed,
        drop_last=False,
    )


class EpochSampler(Sampler[int]):
    """A fixed number of draws per epoch and process, by dataset size or balanced.

    The order is a function of ``(seed, epoch)`` only, like :func:`build_sampler`'s, so a
    resumed run repeats an uninterrupted one and two runs of one seed see the same faces in
    the same order (paired comparisons). Each epoch draws ``num_samples * world_size``
    indices and process ``rank`` takes every ``world_size``-th one from position ``rank``.

    - ``"size"``: the concatenation is shuffled, and reshuffled whenever it runs out, so every
      face is seen once per pass and each dataset is drawn in proportion to its size.
    - ``"balanced"``: every dataset equally often: a dataset is drawn uniformly, then a face
      within it uniformly, with replacement.

    Args:
        sizes: Size of each (concatenated) dataset, in the concatenation's order.
        num_samples: Draws per process and epoch.
        sampling: ``"size"`` or ``"balanced"``.
        seed: The run seed.
        rank, world_size: This process's place in the run.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        num_samples: int,
        sampling: str = "size",
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if sampling not in ("size", "balanced"):
            raise ValueError(f"sampling must be 'size' or 'balanced', got {sampling!r}")
        if sum(sizes) == 0:
            raise ValueError("the training set is empty")
        if num_samples < 1:
            raise ValueError(f"num_samples must be positive, got {num_samples}")
        self.sizes = [int(n) for n in sizes]
        self.num_samples = int(num_samples)
        self.sampling = sampling
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _indices(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        total = self.num_samples * self.world_size
        n = sum(self.sizes)
        if self.sampling == "size":
            passes = -(-total // n)
            return torch.cat([torch.randperm(n, generator=g) for _ in range(passes)])[:total]
        nonempty = torch.tensor([i for i, size in enumerate(self.sizes) if size > 0])
        starts = torch.tensor([0, *self.sizes]).cumsum(0)[:-1]
        sizes = torch.tensor(self.sizes)
        datasets = nonempty[torch.randint(len(nonempty), (total,), generator=g)]  # (total,)
        within = (torch.rand(total, generator=g, dtype=torch.float64) * sizes[datasets]).long()
        return starts[datasets] + within.clamp_max(sizes[datasets] - 1)

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices()[self.rank :: self.world_size].tolist())

    def __len__(self) -> int:
        return self.num_samples


def build_train_sampler(
    dataset: Dataset[Any],
    ctx: DistributedContext,
    seed: int,
    sampling: str = "size",
    num_samples: int | None = None,
) -> Sampler[int]:
    """The training sampler of ``data.sampling`` and ``train.steps_per_epoch``.

    With the paper's sampling by size and no fixed epoch length this is
    :func:`build_sampler` (one pass over the concatenation per epoch); otherwise an
    :class:`EpochSampler` drawing ``num_samples`` faces per process (``None``: the
    dataset's length divided among the processes).

    Args:
        dataset: The training set; a :class:`~sepbn.data.datasets.MultiProtocolDataset`
            (its ``sizes``) or any sized dataset (one dataset).
        ctx: The process's place in the run.
        seed: The run seed.
        sampling: ``"size"`` or ``"balanced"``.
        num_samples: Draws per process and epoch, or ``None``.
    """
    if sampling == "size" and num_samples is None:
        return build_sampler(dataset, ctx, seed)
    if not isinstance(dataset, Sized) or len(dataset) == 0:
        raise ValueError("the training set is empty")
    sizes = getattr(dataset, "sizes", None) or [len(dataset)]
    if num_samples is None:
        num_samples = -(-len(dataset) // ctx.world_size)
    return EpochSampler(sizes, num_samples, sampling, seed, ctx.rank, ctx.world_size)


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """Every ``BatchNorm*d`` of ``model`` (SepBN's inner one included) to ``SyncBatchNorm``."""
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def wrap_model(
    model: nn.Module,
    ctx: DistributedContext,
    *,
    sync_bn: bool = False,
    find_unused_parameters: bool = False,
) -> nn.Module:
    """Move ``model`` to the device and wrap it for this run.

    Args:
        model: The model (on any device).
        ctx: The process's place in the run.
        sync_bn: Convert batch norms to ``SyncBatchNorm`` (multi-process CUDA runs only; a
            single process has nothing to synchronize, so it is skipped there).
        find_unused_parameters: DDP's option, needed when some parameters get no gradient in
            a step (a protocol branch absent from a batch).

    Returns:
        The model itself for a single process, else a ``DistributedDataParallel``.

    Raises:
        ValueError: ``sync_bn`` in a multi-process CPU run.
    """
    if not ctx.is_distributed:
        return model.to(ctx.device)
    if sync_bn:
        if ctx.device.type != "cuda":
            raise ConfigError(
                "train.sync_bn needs CUDA: PyTorch's SyncBatchNorm does not synchronize CPU "
                "tensors; set train.sync_bn=false for CPU runs"
            )
        model = convert_sync_batchnorm(model)
    model = model.to(ctx.device)
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(
        model, device_ids=device_ids, find_unused_parameters=find_unused_parameters
    )


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain model inside DDP and ``torch.compile`` wrappers (for ``state_dict``)."""
    while True:
        if isinstance(model, DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model
