"""On a GPU: AMP training with SepBN, torch.compile, DDP with NCCL, SyncBatchNorm conversion.

On CUDA the SepBN layers run their plain path (the C++ op is CPU-only);
``torch.compile(model)`` is how a GPU user gets them fused.

Every test here is marked ``cuda`` and skipped, with the reason, without a GPU. The DDP
test reuses the toy problem and torchrun harness of ``test_distributed.py`` (gloo, CPU).
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from test_distributed import TOY, _load_toy
from torch import nn

from helpers import assert_backward_matches, randomize, randomize_norms
from sepbn.engine.distributed import convert_sync_batchnorm
from sepbn.models import build_model
from sepbn.nn import SepBatchNorm2d
from sepbn.nn.dispatch import use_native

pytestmark = pytest.mark.cuda


@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_resnext50_sepbn_amp_training_stays_finite(amp: str) -> None:
    """30 SGD steps of a narrow ResNeXt-50 (SepBN at BN3) under autocast, channels_last."""
    torch.manual_seed(0)
    model = build_model("resnext50", num_points=19, norm="sepbn", input_size=64, width_mult=0.25)
    model = model.cuda().to(memory_format=torch.channels_last).train()
    dtype = torch.float16 if amp == "fp16" else torch.bfloat16
    scaler = torch.amp.GradScaler("cuda", enabled=amp == "fp16")
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    x = torch.rand(8, 3, 64, 64, device="cuda").contiguous(memory_format=torch.channels_last)
    target = torch.rand(8, 19, 2, device="cuda") * 64
    before = copy.deepcopy(model.state_dict())
    sep = [m for m in model.modules() if isinstance(m, SepBatchNorm2d)]
    assert sep and not use_native(sep[0], torch.randn(2, sep[0].num_features, 4, 4, device="cuda"))
    for step in range(30):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=dtype):
            loss = nn.functional.l1_loss(model(x).float(), target)
        assert torch.isfinite(loss), f"step {step}: loss {loss.item()}"
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    assert all(torch.isfinite(m.norm.running_var).all() for m in sep)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert any(".fc1." in k for k in changed) and any(".fc2." in k for k in changed)  # attention


def test_sync_batchnorm_conversion_of_a_sepbn_model_on_cuda() -> None:
    """Converted (inner SyncBatchNorm) equals unconverted (inner BatchNorm2d), both plain."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 1), SepBatchNorm2d(8)
    )
    model = randomize_norms(model).cuda().train()
    converted = convert_sync_batchnorm(copy.deepcopy(model))
    assert isinstance(converted[4].norm, nn.SyncBatchNorm)
    x = torch.rand(4, 3, 12, 12, device="cuda")
    y, y_sync = model(x), converted(x)  # no process group: SyncBatchNorm computes locally
    torch.testing.assert_close(y_sync, y, rtol=1e-4, atol=1e-4)
    y.square().sum().backward()
    y_sync.square().sum().backward()
    for (name, p), p_sync in zip(model.named_parameters(), converted.parameters()):
        torch.testing.assert_close(p_sync.grad, p.grad, rtol=1e-3, atol=1e-4, msg=name)
    torch.testing.assert_close(converted[4].norm.running_var, model[4].norm.running_var)
    model.eval()
    converted.eval()
    with torch.no_grad():
        torch.testing.assert_close(converted(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_compiled_model_train_step_equals_eager_on_cuda(memory_format) -> None:
    """``torch.compile(model)`` (inductor) of conv, SepBN, ReLU, conv: output, input and
    parameter gradients and running statistics equal the eager model's (float32)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), SepBatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 8, 3)
    )
    randomize(model[1])
    model = model.cuda().to(memory_format=memory_format).train()
    eager = copy.deepcopy(model)
    x = torch.randn(4, 3, 12, 12, device="cuda").contiguous(memory_format=memory_format)
    x_compiled, x_eager = x.clone().requires_grad_(), x.clone().requires_grad_()
    y = torch.compile(model, fullgraph=True)(x_compiled)
    y_eager = eager(x_eager)
    torch.testing.assert_close(y, y_eager, rtol=1e-4, atol=1e-4)
    assert_backward_matches(model, eager, x_compiled, x_eager, y, y_eager, 1e-4, 1e-4, True)
    torch.testing.assert_close(model[1].norm.running_mean, eager[1].norm.running_mean)
    torch.testing.assert_close(model[1].norm.running_var, eager[1].norm.running_var)


NCCL_SCRIPT = """
import os, sys
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ddp_toy  # noqa: E402

from sepbn.engine.distributed import cleanup_distributed, init_distributed  # noqa: E402

out = Path(sys.argv[1])
ctx = init_distributed("cuda")
assert ctx.backend == "nccl", ctx
state = ddp_toy.run(out / "toy", batch_size=4, ctx=ctx, device="cuda")
torch.save({k: v.cpu() for k, v in state.items()}, out / f"toy_rank{ctx.rank}.pt")
cleanup_distributed(ctx)
"""


def test_ddp_nccl_equals_single_process(tmp_path: Path) -> None:
    """World size = the GPUs present, 4 faces per rank; a single process with 4·world faces."""
    world = torch.cuda.device_count()
    (tmp_path / "ddp_toy.py").write_text(textwrap.dedent(TOY))
    script = tmp_path / "run_nccl.py"
    script.write_text(textwrap.dedent(NCCL_SCRIPT))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
        "--nproc_per_node", str(world), str(script), str(tmp_path),
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    toy = _load_toy(tmp_path / "ddp_toy.py")
    reference = toy.run(tmp_path / "reference", batch_size=4 * world, device="cuda")
    for rank in range(world):
        ddp = torch.load(tmp_path / f"toy_rank{rank}.pt", weights_only=True)
        for key, value in reference.items():
            torch.testing.assert_close(ddp[key], value.cpu(), rtol=1e-4, atol=1e-5, msg=key)
