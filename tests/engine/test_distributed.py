"""Distributed helpers, and a real 2-process DDP run (gloo, CPU) under torchrun."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from sepbn.engine.distributed import (
    DistributedContext,
    EpochSampler,
    build_sampler,
    build_train_sampler,
    convert_sync_batchnorm,
    init_distributed,
    resolve_device,
    wrap_model,
)
from sepbn.nn import SepBatchNorm2d


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    with pytest.raises(ValueError, match=r"unknown train\.device 'tpu'; valid: 'auto', 'cpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda:1")


def test_without_torchrun_a_world_of_one(monkeypatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    ctx = init_distributed("cpu")
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.is_distributed) == (0, 1, True, False)
    assert not torch.distributed.is_initialized()
    model = nn.Linear(2, 2)
    assert wrap_model(model, ctx, sync_bn=True) is model  # nothing to synchronize
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE='two' is not an integer"):
        init_distributed("cpu")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="RANK=2, WORLD_SIZE=2"):
        init_distributed("cpu")


def test_sampler_order_depends_on_seed_and_epoch_and_ranks_partition() -> None:
    data = list(range(10))
    one = build_sampler(data, DistributedContext(), seed=3)
    one.set_epoch(2)
    order = list(one)
    again = build_sampler(data, DistributedContext(), seed=3)
    again.set_epoch(2)
    assert list(again) == order and sorted(order) == data
    again.set_epoch(3)
    assert list(again) != order
    parts = []
    for rank in (0, 1):
        s = build_sampler(data, DistributedContext(rank=rank, world_size=2), seed=3)
        s.set_epoch(2)
        parts.append(list(s))
    assert sorted(parts[0] + parts[1]) == data
    # Rank r takes every other face of the single-process order.
    assert parts[0] == order[0::2] and parts[1] == order[1::2]
    with pytest.raises(ValueError, match="the training set is empty"):
        build_sampler([], DistributedContext(), seed=0)


def test_sync_batchnorm_conversion_covers_sepbn_inner_norm() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1), SepBatchNorm2d(4)
    )
    model.train()
    x = torch.rand(2, 3, 6, 6)
    model(x)  # fill running statistics
    model.eval()
    with torch.no_grad():
        before = model(x)
    converted = convert_sync_batchnorm(model)
    kinds = [type(m) for m in converted.modules()]
    assert nn.BatchNorm2d not in kinds
    assert kinds.count(nn.SyncBatchNorm) == 2
    assert isinstance(converted[3].norm, nn.SyncBatchNorm)  # SepBN's shared normalization
    with torch.no_grad():
        assert torch.equal(converted(x), before)


def test_sync_bn_is_refused_for_multi_process_cpu_runs() -> None:
    ctx = DistributedContext(rank=0, world_size=2, backend="gloo")
    with pytest.raises(ValueError, match=r"train\.sync_bn needs CUDA"):
        wrap_model(nn.BatchNorm2d(2), ctx, sync_bn=True)


# --------------------------------------------------------------------------- 2 processes

TOY = '''
"""A tiny BN-free regression problem shared by the DDP script and the test."""
import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from sepbn.config import DataConfig, ExperimentConfig, OptimConfig, TrainConfig
from sepbn.engine.trainer import Trainer


class Faces(Dataset):
    def __init__(self, n):
        g = torch.Generator().manual_seed(7)
        self.images = torch.randint(0, 256, (n, 3, 16, 16), generator=g, dtype=torch.uint8)
        self.points = torch.rand(n, 5, 2, generator=g, dtype=torch.float64) * 15

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {
            "image": self.images[i], "landmarks": self.points[i].float(),
            "valid": torch.ones(5, dtype=torch.bool),
            "matrix": torch.tensor([[1.0, 0, 0], [0, 1.0, 0]], dtype=torch.float64),
            "orig_landmarks": self.points[i], "norm": torch.tensor(10.0, dtype=torch.float64),
            "protocol_id": torch.tensor(0), "index": torch.tensor(i),
            "domain": torch.tensor(-1), "protocol": "wider5",
        }


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.num_points = 5
        self.body = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
            nn.Linear(16, 10),
        )

    def forward(self, x):
        return self.body(x).view(-1, 5, 2)


def run(stage_dir, batch_size, ctx=None, device="cpu"):
    config = ExperimentConfig(
        data=DataConfig(num_workers=0),
        optim=OptimConfig(lr=0.05, min_lr=1e-3, batch_size=batch_size, epochs=2, warmup_epochs=1),
        train=TrainConfig(device=device, checkpoint_every=1, progress=False, tensorboard=False),
    )
    torch.manual_seed(0)
    trainer = Trainer(config, stage_dir, Net(), Faces(16), ctx=ctx)
    trainer.fit()
    return trainer.model.state_dict()
'''

SCRIPT = """
import hashlib, io, os, sys
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ddp_toy  # noqa: E402

from sepbn.config import config_from_dict  # noqa: E402
from sepbn.engine.distributed import cleanup_distributed, init_distributed  # noqa: E402
from sepbn.engine.experiment import train  # noqa: E402

out = Path(sys.argv[1])
ctx = init_distributed("cpu")
assert ctx.world_size == 2 and ctx.backend == "gloo", ctx


def digest(state):
    buf = io.BytesIO()
    torch.save({k: v.contiguous() for k, v in sorted(state.items())}, buf)
    return hashlib.sha256(buf.getvalue()).hexdigest()


# 1. The Trainer on a BN-free net: 2 ranks x 4 faces per step.
state = ddp_toy.run(out / "toy", batch_size=4, ctx=ctx)
torch.save(state, out / f"toy_rank{ctx.rank}.pt")

# 2. The whole train() path: CNT model with SepBN, two protocols, synthetic faces.
def faces(protocol, n, start):
    options = {"num_faces": n, "start_index": start, "config": {"image_size": 96}}
    return {"kind": "synthetic", "protocol": protocol, "options": options}


config = config_from_dict({
    "model": {"arch": "vanilla_cnn", "norm": "sepbn", "width_mult": 0.125},
    "data": {"train": [faces("300w", 8, 0), faces("wflw", 8, 50)], "num_workers": 0},
    "optim": {"epochs": 2, "warmup_epochs": 1, "batch_size": 4},
    "temperature": {"epochs": 1},
    "train": {"device": "cpu", "progress": False, "tensorboard": False, "checkpoint_every": 1},
})
final = {}
train(config, out / "run", callbacks=[lambda info: final.update(info.model.state_dict())])
(out / f"hash_rank{ctx.rank}.txt").write_text(digest(state) + " " + digest(final))
cleanup_distributed(ctx)
"""


def _load_toy(path: Path):
    spec = importlib.util.spec_from_file_location("ddp_toy", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_two_gloo_processes_end_with_identical_weights(tmp_path: Path) -> None:
    (tmp_path / "ddp_toy.py").write_text(textwrap.dedent(TOY))
    script = tmp_path / "run_ddp.py"
    script.write_text(textwrap.dedent(SCRIPT))
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
        "--nproc_per_node", "2", str(script), str(tmp_path),
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    hashes = [(tmp_path / f"hash_rank{r}.txt").read_text().split() for r in (0, 1)]
    assert hashes[0] == hashes[1]  # both parts, both ranks: the same weights

    # Only rank 0 logged: one row per epoch, not two.
    rows = (tmp_path / "toy" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 2
    assert len((tmp_path / "run" / "stage1" / "metrics.jsonl").read_text().splitlines()) == 2

    # DDP with 2 x 4 faces per step is single-process training with 8: each rank takes every
    # other face of the same shuffled order and DDP averages the two gradients.
    toy = _load_toy(tmp_path / "ddp_toy.py")
    reference = toy.run(tmp_path / "reference", batch_size=8)
    ddp = torch.load(tmp_path / "toy_rank1.pt", weights_only=True)
    torch.manual_seed(0)
    initial = toy.Net().state_dict()
    for key, value in reference.items():
        torch.testing.assert_close(ddp[key], value, rtol=1e-5, atol=1e-6)
        assert not torch.equal(value, initial[key])  # it did train


def test_check_device_names_the_available_devices(monkeypatch) -> None:
    from sepbn.engine.distributed import available_devices, check_device

    assert check_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"unknown device 'gpu0'; valid: 'cpu', 'cuda'"):
        check_device("gpu0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert "cuda:1" in available_devices()
    assert check_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match=r"device 'cuda:2': this machine has 2 CUDA device"):
        check_device("cuda:2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"'cuda': CUDA is not available.*available: \['cpu'"):
        check_device(torch.device("cuda"))
    with pytest.raises(ValueError, match=r"train\.device='cuda'.*CUDA is not available"):
        resolve_device("cuda")


def test_epoch_sampler_by_size_is_a_reshuffled_pass_per_epoch() -> None:
    sampler = EpochSampler([3, 5], num_samples=20, sampling="size", seed=4)
    sampler.set_epoch(1)
    first = list(sampler)
    assert len(first) == len(sampler) == 20
    # Whole passes over the 8 faces, each a permutation, then the start of another.
    assert sorted(first[:8]) == sorted(first[8:16]) == list(range(8))
    assert len(set(first[16:])) == 4
    assert list(sampler) == first  # a function of (seed, epoch) only
    sampler.set_epoch(2)
    assert list(sampler) != first


def test_epoch_sampler_balanced_draws_every_dataset_equally() -> None:
    sampler = EpochSampler([10, 990], num_samples=20000, sampling="balanced", seed=0)
    drawn = torch.tensor(list(sampler))
    small = (drawn < 10).float().mean().item()
    assert abs(small - 0.5) < 0.02  # by size it would be 1%
    assert drawn.min() >= 0 and drawn.max() <= 999
    assert set(drawn[drawn < 10].tolist()) == set(range(10))


def test_epoch_sampler_ranks_split_one_draw() -> None:
    whole = list(EpochSampler([7], num_samples=12, seed=1))
    parts = [list(EpochSampler([7], 6, seed=1, rank=r, world_size=2)) for r in (0, 1)]
    assert parts[0] == whole[0::2] and parts[1] == whole[1::2]


def test_train_sampler_keeps_the_plain_pass_by_default() -> None:
    data = list(range(10))
    ctx = DistributedContext()
    assert isinstance(build_train_sampler(data, ctx, 0), torch.utils.data.DistributedSampler)
    fixed = build_train_sampler(data, ctx, 0, num_samples=32)
    assert isinstance(fixed, EpochSampler) and len(fixed) == 32
    with pytest.raises(ValueError, match="sampling"):
        EpochSampler([3], 4, sampling="uniform")
