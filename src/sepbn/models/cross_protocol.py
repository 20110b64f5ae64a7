"""Backbone + head compositions: the single-protocol regressor and the CNT model.

Every architecture in :mod:`sepbn.models` is split the same way: a ``backbone``
(ImageNet normalization and all convolutional layers, returning a feature map of
``feature_channels x feature_size x feature_size``) and a ``head`` regressing the
``2L`` coordinate vector of one protocol. That split is what Cross-protocol Network
Training (paper Sec. IV, Fig. 5) needs: stage 1 shares one backbone between several
protocol branches, stage 2 keeps one branch and gives the backbone a tiny learning
rate, which :meth:`backbone_parameters` / :meth:`head_parameters` make uniform
across models.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import TypeGuard

import torch
from torch import Tensor, nn

from sepbn.nn import domain_routing, find_domain_batchnorms

#: ``branch_factory(in_channels, feature_size, num_points)`` -> a module mapping a
#: ``(n, C, s, s)`` feature map to ``(n, L, 2)`` coordinates.
BranchFactory = Callable[[int, int, int], nn.Module]


@contextmanager
def _routed_rows(branch: nn.Module, rows: Tensor, batch_size: int) -> Iterator[None]:
    """Narrow the domain labels routed to the whole batch down to a branch's rows.

    ``domain_routing(model, domains)`` labels every ``DomainBatchNorm2d`` with the
    ``(N,)`` domains of the batch, but a branch only sees ``n_p`` rows of it.
    """
    labels = [
        layer.routed_domains
        for _, layer in find_domain_batchnorms(branch)
        if layer.routed_domains is not None and layer.routed_domains.shape[0] == batch_size
    ]
    if not labels:
        yield
        return
    with domain_routing(branch, labels[0].index_select(0, rows.to(labels[0].device))):
        yield


class LandmarkRegressor(nn.Module):
    """A single-protocol model: ``head(backbone(x))``.

    Args:
        backbone: Images in ``[0, 1]`` -> feature map ``(N, C, s, s)``.
        head: Feature map -> ``(N, L, 2)`` coordinates divided by the input size.
        num_points: L.
        feature_channels: C of the backbone output.
        feature_size: s of the backbone output (square maps).

    Shape:
        - Input: ``(N, 3, S, S)`` float in ``[0, 1]``.
        - Output: ``(N, L, 2)``; crop pixels are ``output * S``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        num_points: int,
        feature_channels: int,
        feature_size: int,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.num_points = num_points
        self.feature_channels = feature_channels
        self.feature_size = feature_size

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the shared part (CNT stage 2 gives them learning rate 1e-7)."""
        return self.backbone.parameters()

    def head_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the regression head."""
        return self.head.parameters()

    def extra_repr(self) -> str:
        return (
            f"num_points={self.num_points}, feature_channels={self.feature_channels}, "
            f"feature_size={self.feature_size}"
        )


class CrossProtocolModel(nn.Module):
    """Shared backbone with one regression branch per protocol (paper Fig. 5).

    Every sample of a batch goes through the backbone once, then only through the
    branch of its own protocol, so one batch may mix protocols with different L.

    Args:
        backbone: Images in ``[0, 1]`` -> feature map ``(N, C, s, s)``; usually the
            ``backbone`` attribute of a single-protocol model.
        feature_channels: C of the backbone output.
        feature_size: s of the backbone output.
        heads: Protocol name -> L. The iteration order fixes the protocol ids:
            ``protocols[i]`` is the branch for ``protocol_ids == i``.
        branch_factory: Builds one branch; see :data:`BranchFactory`. The branches of
            :mod:`sepbn.models` start with the extra convolution of Fig. 5.

    Attributes:
        heads: Protocol name -> L, in protocol-id order.
        branches: ``nn.ModuleDict`` of the branches, in protocol-id order.

    Shape:
        - images: ``(N, 3, S, S)`` float in ``[0, 1]``.
        - protocol_ids: ``(N,)`` integer, values in ``[0, len(protocols))``.
        - Output: ``{name: (n_p, L_p, 2)}`` for each protocol present in the batch,
          rows in ascending batch position (the order of the collate's ``"rows"``).
    """

    def __init__(
        self,
        backbone: nn.Module,
        feature_channels: int,
        feature_size: int,
        heads: Mapping[str, int],
        branch_factory: BranchFactory,
    ) -> None:
        super().__init__()
        if len(heads) == 0:
            raise ValueError("heads is empty; give at least one protocol name -> num_points")
        for name, num_points in heads.items():
            if not isinstance(num_points, int) or num_points < 1:
                raise ValueError(
                    f"heads[{name!r}] must be a positive landmark count, got {num_points!r}"
                )
        self.backbone = backbone
        self.feature_channels = feature_channels
        self.feature_size = feature_size
        self.heads: dict[str, int] = dict(heads)
        self.branches = nn.ModuleDict(
            {name: branch_factory(feature_channels, feature_size, n) for name, n in heads.items()}
        )

    @property
    def protocols(self) -> list[str]:
        """Protocol names; the position of a name is its protocol id."""
        return list(self.branches.keys())

    def forward(self, images: Tensor, protocol_ids: Tensor) -> dict[str, Tensor]:
        n = images.shape[0]
        if protocol_ids.shape != (n,):
            raise ValueError(
                f"protocol_ids must have shape ({n},) to match the images, "
                f"got {tuple(protocol_ids.shape)}"
            )
        if protocol_ids.is_floating_point() or protocol_ids.is_complex():
            raise TypeError(f"protocol_ids must be integers, got dtype {protocol_ids.dtype}")
        num_protocols = len(self.branches)
        ids = protocol_ids.to(device=images.device, dtype=torch.long)
        if n > 0:
            lo, hi = (int(v) for v in ids.aminmax())
            if lo < 0 or hi >= num_protocols:
                bad = lo if lo < 0 else hi
                raise ValueError(
                    f"protocol id {bad} out of range; valid ids 0..{num_protocols - 1} "
                    f"for protocols {self.protocols}"
                )
        features = self.backbone(images)  # (N, C, s, s), computed once for all protocols
        # One host sync for all protocols; the stable sort keeps each group ascending.
        counts = torch.bincount(ids, minlength=num_protocols).tolist()
        order = torch.argsort(ids, stable=True)
        outputs: dict[str, Tensor] = {}
        for (name, branch), rows, count in zip(self.branches.items(), order.split(counts), counts):
            if count == 0:
                continue
            if count == n:  # a single-protocol batch needs no gather
                outputs[name] = branch(features)  # (N, L_p, 2)
                continue
            with _routed_rows(branch, rows, n):
                outputs[name] = branch(features.index_select(0, rows))  # (n_p, L_p, 2)
        return outputs

    def forward_all(self, images: Tensor, names: Iterable[str] | None = None) -> dict[str, Tensor]:
        """Every image through every branch (or those in ``names``), one backbone pass.

        What inference wants from a CNT model: all its landmark schemes for the same faces.
        Equal to ``single_protocol(name)(images)`` for each name, with the backbone run once.

        Args:
            images: ``(N, 3, S, S)`` float in ``[0, 1]``.
            names: Protocol names, in the order of the returned dict; default: all branches.

        Returns:
            ``{name: (N, L_p, 2)}``.
        """
        names = self.protocols if names is None else list(names)
        self._check_names(names)
        features = self.backbone(images)  # (N, C, s, s), shared by every branch
        return {name: self.branches[name](features) for name in names}

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the shared backbone (CNT stage 2: learning rate 1e-7)."""
        return self.backbone.parameters()

    def head_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of all protocol branches."""
        return self.branches.parameters()

    def single_protocol(self, name: str) -> LandmarkRegressor:
        """The plain model for one protocol: shared backbone + that branch.

        The returned model shares its modules with this one (no copy), so training it
        trains this model too; ``copy.deepcopy`` the result for an independent copy.

        Args:
            name: A name in :attr:`protocols`.

        Returns:
            A :class:`LandmarkRegressor` with ``model(x) -> (N, L, 2)``.
        """
        self._check_names([name])
        return LandmarkRegressor(
            self.backbone,
            self.branches[name],
            self.heads[name],
            self.feature_channels,
            self.feature_size,
        )

    def keep_branches(self, names: Iterable[str]) -> None:
        """Drop every branch not in ``names``, in place (CNT stage 2).

        The kept branches keep their relative order, and protocol ids are renumbered
        to the positions in the new :attr:`protocols`.

        Args:
            names: Protocol names to keep, at least one.
        """
        keep = set(names)
        if not keep:
            raise ValueError("keep_branches needs at least one protocol name")
        self._check_names(sorted(keep))
        kept = [name for name in self.protocols if name in keep]
        self.branches = nn.ModuleDict({name: self.branches[name] for name in kept})
        self.heads = {name: self.heads[name] for name in kept}

    def _check_names(self, names: Iterable[str]) -> None:
        for name in names:
            if name not in self.branches:
                raise KeyError(f"unknown protocol {name!r}; this model has {self.protocols}")

    def extra_repr(self) -> str:
        return (
            f"heads={self.heads}, feature_channels={self.feature_channels}, "
            f"feature_size={self.feature_size}"
        )


def branch_norm(norm: nn.Module, x: Tensor) -> Tensor:
    """Apply a CNT branch's normalization, also when the branch got a single value per channel.

    Only for the legacy branch with a norm (``model.branch_norm: true``, the branch of sepbn
    before 0.2 and of old checkpoints). A branch sees only its protocol's rows of the batch.
    When that is one face on a 1x1 feature map (small inputs: the Vanilla CNN below 128 px,
    the torchvision nets below 64 px), batch statistics do not exist and BatchNorm raises;
    that face is then normalized with the running statistics (the layer's eval path) and
    does not update them. The mode is restored in ``finally``, also when the layer raises.

    Shape:
        - x: ``(n, C, s, s)``; output: the same.
    """
    if norm.training and x.shape[0] * x.shape[2] * x.shape[3] == 1:
        norm.train(False)
        try:
            return norm(x)
        finally:
            norm.train(True)
    return norm(x)


class ProtocolBranch(nn.Module):
    """One CNT branch of Fig. 5: an extra convolution keeping the C channels, an activation,
    then the protocol's regression ``head``.

    The paper says only that "an additional convolution layer is applied at the beginning of
    each branch" (Fig. 5); it leaves open the kernel, a norm after it, and its initialization.
    What we chose, and why (measured in docs/analysis.md, "Why CNT lost"):

    - **No norm.** A norm after the extra convolution normalizes each protocol's rows of the
      batch on their own: at small inputs its statistics come from the few faces of that
      protocol in the batch (one face on a 1x1 map switches it to its running statistics),
      so a face's output depends on which other faces share its batch, and the train/eval
      mismatch cost 3 NME points on the demo. Without it a branch treats every face alone.
    - **Identity initialization, with a bias.** The convolution starts as the identity
      (``nn.init.dirac_``, bias 0), so a freshly built CNT model with one branch computes
      ``head(act(features))``: the plain single-protocol model (exactly for non-negative
      features, as after ReLU), and stage 1 starts where single-protocol training starts.
    - ``norm_layer`` given restores the old branch (conv without bias, norm, activation) for
      checkpoints written before this change (``model.branch_norm: true``).

    Args:
        in_channels: C of the shared feature map.
        kernel_size: Odd kernel size of the extra convolution (padding keeps the map size).
        norm_layer: ``None`` (default): no norm. Otherwise the legacy norm after the
            convolution.
        activation: The activation module.
        head: Regression head, ``(n, C, s, s) -> (n, L, 2)``.

    Shape:
        - Input: ``(n, C, s, s)``.
        - Output: ``(n, L, 2)``.
    """

    def __init__(
        self,
        in_channels: int,
        kernel_size: int,
        norm_layer: Callable[[int], nn.Module] | None,
        activation: nn.Module,
        head: nn.Module,
    ) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd number, got {kernel_size}")
        self.conv = nn.Conv2d(
            in_channels,
            in_channels,
            kernel_size,
            padding=kernel_size // 2,
            bias=norm_layer is None,
        )
        self.norm = norm_layer(in_channels) if norm_layer is not None else None
        self.act = activation
        self.head = head
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The extra convolution as the identity (legacy branch: PyTorch's default init)."""
        if self.norm is not None:
            return
        nn.init.dirac_(self.conv.weight)
        assert self.conv.bias is not None  # a branch without a norm has a bias
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.norm is not None:
            x = branch_norm(self.norm, x)
        return self.head(self.act(x))


def is_cross_protocol(model: nn.Module) -> TypeGuard[CrossProtocolModel]:
    """True for a model called as ``model(x, protocol_ids)``: it names its branches in a
    ``protocols`` list (as :class:`CrossProtocolModel` does, and a ``torch.compile`` wrapper of
    one, which forwards its attributes); any other model is called as ``model(x) -> (N, L, 2)``.
    """
    return isinstance(getattr(model, "protocols", None), (list, tuple))
