"""``DomainBatchNorm2d``: the brute-force SepBN of Section III-A (Fig. 2), and its routing helpers.

Every sample goes through the complete batch norm (own running statistics, own affine)
of its domain label. ``nn.Sequential`` cannot pass the labels down, so
:func:`domain_routing` sets them on every such layer of a model for the duration of a
``with`` block. At test time the domain is unknown; the paper runs every test image
through every domain and keeps the best result (Table II), which :func:`best_of_domains`
does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import cast

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from sepbn.nn.functional import copy_running_stats, fold_batch_norm, running_stats
from sepbn.nn.separable_norm_base import _check_positive_int


class DomainBatchNorm2d(nn.Module):
    """K parallel ``nn.BatchNorm2d`` branches; each sample uses the branch of its domain.

    In training, each branch computes its batch statistics over its own samples only and
    updates only its own running statistics; a branch without samples in the batch is
    left untouched. In eval mode all branches' running statistics and affines are
    gathered per sample and applied in one multiply-add.

    The labels come from the ``domains`` argument or, when it is omitted, from an
    enclosing :func:`domain_routing` block; without either the call raises.

    Args:
        num_features: Number of channels C.
        num_domains: Number of domains K (paper: 3, near-frontal / left / right profile).
        eps: As in ``nn.BatchNorm2d``.
        momentum: As in ``nn.BatchNorm2d``.
        affine: As in ``nn.BatchNorm2d``.
        track_running_stats: As in ``nn.BatchNorm2d``.

    Attributes:
        branches: The K ``nn.BatchNorm2d`` branches.
        routed_domains: Labels set by :func:`domain_routing`, or None.

    Shape:
        - Input: (N, C, H, W)
        - domains: (N,) integer labels in [0, K)
        - Output: (N, C, H, W)
    """

    def __init__(
        self,
        num_features: int,
        num_domains: int = 3,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
    ) -> None:
        super().__init__()
        _check_positive_int("num_features", num_features)
        _check_positive_int("num_domains", num_domains)
        self.num_features = num_features
        self.num_domains = num_domains
        self.branches = nn.ModuleList(
            nn.BatchNorm2d(num_features, eps, momentum, affine, track_running_stats)
            for _ in range(num_domains)
        )
        self.routed_domains: Tensor | None = None
        self.reset_parameters()

    def _norms(self) -> list[_BatchNorm]:
        """The branches, typed: ``nn.ModuleList`` yields plain modules."""
        # BatchNorm2d, or SyncBatchNorm after nn.SyncBatchNorm.convert_sync_batchnorm.
        return cast("list[_BatchNorm]", list(self.branches))

    def reset_parameters(self) -> None:
        """Reset every branch as a fresh ``nn.BatchNorm2d``."""
        for branch in self._norms():
            branch.reset_parameters()

    @torch.no_grad()
    def init_from_batchnorm(self, bn: nn.modules.batchnorm._NormBase) -> None:
        """Copy a trained batch norm (statistics, affine, eps, momentum) into every branch.

        Raises:
            ValueError: If the channel counts differ.
        """
        if bn.num_features != self.num_features:
            raise ValueError(
                f"cannot start a DomainBatchNorm2d({self.num_features}) from "
                f"{type(bn).__name__}({bn.num_features}): channel counts differ"
            )
        for branch in self._norms():
            branch.eps = bn.eps
            branch.momentum = bn.momentum
            copy_running_stats(bn, branch)
            if branch.affine:
                if bn.affine:
                    branch.weight.copy_(bn.weight)
                    branch.bias.copy_(bn.bias)
                else:
                    branch.weight.fill_(1.0)
                    branch.bias.fill_(0.0)

    def forward(self, x: Tensor, domains: Tensor | None = None) -> Tensor:
        """Normalize every sample with the branch of its domain.

        Args:
            x: Feature map.
            domains: Domain label per sample; defaults to the labels set by
                :func:`domain_routing`.

        Raises:
            RuntimeError: If no labels are given and none are routed.
            ValueError: If the labels have the wrong shape, dtype or range.

        Shape:
            - x: (N, C, H, W)
            - domains: (N,)
            - Output: (N, C, H, W)
        """
        if x.dim() != 4 or x.shape[1] != self.num_features:
            raise ValueError(
                f"DomainBatchNorm2d expects input of shape (N, {self.num_features}, H, W), "
                f"got {tuple(x.shape)}"
            )
        if domains is not None:
            domains = check_domains(domains, self.num_domains, batch_size=x.shape[0])
        elif self.routed_domains is not None:
            domains = self.routed_domains  # validated by domain_routing, once for all layers
            if domains.shape[0] != x.shape[0]:
                raise ValueError(
                    f"domain_routing set {domains.shape[0]} labels, but the batch reaching "
                    f"this layer has {x.shape[0]} samples"
                )
        else:
            raise RuntimeError(
                "DomainBatchNorm2d needs a domain label per sample: call the model inside "
                "`with sepbn.nn.domain_routing(model, domains):` or pass domains=..."
            )
        domains = domains.to(x.device)
        if all(not b.training and b.running_var is not None for b in self._norms()):
            return self._forward_eval(x, domains)
        out = torch.empty_like(x)
        for k, branch in enumerate(self._norms()):
            rows = (domains == k).nonzero().squeeze(1)
            if rows.numel() == 0:  # no sample of this domain: keep its statistics untouched
                continue
            out.index_copy_(0, rows, branch(x.index_select(0, rows)))
        return out

    def _forward_eval(self, x: Tensor, domains: Tensor) -> Tensor:
        """Running statistics and affine of each sample's branch, folded into ``x * a + b``."""
        norms = self._norms()
        stats = [running_stats(b) for b in norms]  # forward checked running_var is kept
        mean = torch.stack([m for m, _ in stats])  # (K, C)
        var = torch.stack([v for _, v in stats])  # (K, C)
        scale = torch.stack(
            [b.weight if b.affine else torch.ones_like(v) for b, (_, v) in zip(norms, stats)]
        )  # (K, C)
        shift = torch.stack(
            [b.bias if b.affine else torch.zeros_like(v) for b, (_, v) in zip(norms, stats)]
        )  # (K, C)
        dtype = stats[0][1].dtype
        eps = torch.tensor([b.eps for b in norms], dtype=dtype, device=var.device)
        # Each sample's branch, (N, C) each (eps (N, 1)), folded into one multiply-add.
        return fold_batch_norm(
            x, mean[domains], var[domains], eps[domains, None], scale[domains], shift[domains]
        )

    def extra_repr(self) -> str:
        first = self._norms()[0]
        return (
            f"{self.num_features}, num_domains={self.num_domains}, eps={first.eps}, "
            f"momentum={first.momentum}, affine={first.affine}, "
            f"track_running_stats={first.track_running_stats}"
        )


def check_domains(domains: Tensor, num_domains: int, batch_size: int | None = None) -> Tensor:
    """Validate domain labels: a 1-D integer tensor with values in ``[0, num_domains)``.

    Args:
        domains: The labels.
        num_domains: Number of domains K.
        batch_size: Expected length N, if known.

    Returns:
        The labels as int64.

    Raises:
        ValueError: Naming the offending shape, dtype or value and the valid range.
    """
    if not isinstance(domains, Tensor) or domains.dim() != 1:
        shape = tuple(domains.shape) if isinstance(domains, Tensor) else type(domains).__name__
        raise ValueError(f"domains must be a 1-D integer tensor of shape (N,), got {shape}")
    if domains.dtype.is_floating_point or domains.dtype.is_complex or domains.dtype == torch.bool:
        raise ValueError(f"domains must be an integer tensor, got dtype {domains.dtype}")
    if batch_size is not None and domains.shape[0] != batch_size:
        raise ValueError(f"got {domains.shape[0]} domain labels for a batch of {batch_size}")
    if domains.numel() > 0:
        low, high = int(domains.min()), int(domains.max())
        if low < 0 or high >= num_domains:
            bad = low if low < 0 else high
            raise ValueError(
                f"domain label {bad} is out of range: valid labels are 0..{num_domains - 1} "
                f"(num_domains={num_domains}; -1 means unknown and cannot be routed)"
            )
    return domains.long()


def find_domain_batchnorms(model: nn.Module) -> list[tuple[str, DomainBatchNorm2d]]:
    """All ``DomainBatchNorm2d`` layers of ``model`` with their qualified names, in order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, DomainBatchNorm2d)]


def num_model_domains(model: nn.Module) -> int:
    """K of the brute-force SepBN layers of ``model``, or 0 when it has none.

    A model with such layers needs its samples' domains in training
    (:func:`domain_routing`) and the best of K passes at test time (:func:`best_of_domains`).
    """
    return max((layer.num_domains for _, layer in find_domain_batchnorms(model)), default=0)


@contextmanager
def domain_routing(model: nn.Module, domains: Tensor) -> Iterator[None]:
    """Route every sample through its domain's branch in every ``DomainBatchNorm2d`` of ``model``.

    Labels are validated against every layer's number of domains up front. Blocks nest:
    the previous labels are restored on exit, also when the block raises.

    Args:
        model: Any module containing ``DomainBatchNorm2d`` layers.
        domains: Domain label per sample of the batch the model is about to see.

    Raises:
        ValueError: If ``model`` has no ``DomainBatchNorm2d`` or a label is invalid.

    Shape:
        - domains: (N,) integers in [0, K)

    Example:
        >>> with domain_routing(model, batch["domain"]):
        ...     pred = model(images)
    """
    layers = [layer for _, layer in find_domain_batchnorms(model)]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no DomainBatchNorm2d layer to route")
    domains = check_domains(domains, min(layer.num_domains for layer in layers))
    previous = [layer.routed_domains for layer in layers]
    for layer in layers:
        layer.routed_domains = domains
    try:
        yield
    finally:
        for layer, old in zip(layers, previous):
            layer.routed_domains = old


def best_of_domains(
    model: nn.Module,
    images: Tensor,
    num_domains: int,
    error_fn: Callable[[Tensor], Tensor],
) -> tuple[Tensor, Tensor]:
    """Run a batch through every domain and keep, per sample, the lowest-error prediction.

    The paper's test protocol for the brute-force SepBN (Section III-A, Table II), where
    the domain of a test image is unknown. Ties keep the lower domain index. Mode and
    grad mode are the caller's (usually ``model.eval()`` and ``torch.no_grad()``).

    Args:
        model: A model with ``DomainBatchNorm2d`` layers, returning a tensor with a
            leading batch dimension.
        images: The batch.
        num_domains: Number of domains to try, ``0..num_domains-1``.
        error_fn: Maps a prediction of the whole batch to a per-sample error (N,), for
            example the NME against the ground truth.

    Returns:
        ``(best_predictions, best_domain)``: the prediction with the lowest error per
        sample, same shape as the model's output, and the domain that produced it.

    Raises:
        ValueError: If ``num_domains`` < 1 or ``error_fn`` does not return shape (N,).
        TypeError: If the model does not return a tensor.

    Shape:
        - images: (N, ...)
        - best_predictions: (N, ...), the model's output shape
        - best_domain: (N,) int64
    """
    _check_positive_int("num_domains", num_domains)
    n = images.shape[0]
    best_pred: Tensor | None = None
    best_err = best_domain = torch.empty(0)
    for d in range(num_domains):
        labels = torch.full((n,), d, dtype=torch.long, device=images.device)
        with domain_routing(model, labels):
            pred = model(images)
        if not isinstance(pred, Tensor) or pred.dim() == 0 or pred.shape[0] != n:
            got = tuple(pred.shape) if isinstance(pred, Tensor) else type(pred).__name__
            raise TypeError(f"the model must return a tensor of shape (N={n}, ...), got {got}")
        err = error_fn(pred)
        if not isinstance(err, Tensor) or tuple(err.shape) != (n,):
            got = tuple(err.shape) if isinstance(err, Tensor) else type(err).__name__
            raise ValueError(f"error_fn must return a per-sample error of shape ({n},), got {got}")
        if best_pred is None:
            best_pred, best_err = pred, err
            best_domain = torch.zeros(n, dtype=torch.long, device=err.device)
            continue
        better = err < best_err  # (N,)
        best_pred = torch.where(better.view(n, *([1] * (pred.dim() - 1))), pred, best_pred)
        best_err = torch.where(better, err, best_err)
        best_domain = torch.where(better, torch.full_like(best_domain, d), best_domain)
    assert best_pred is not None  # num_domains >= 1
    return best_pred, best_domain
