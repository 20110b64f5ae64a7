"""SepBN layer family: Separable Batch Normalization and its variants (Section III).

- :class:`SepBatchNorm2d`: the paper's SepBN with grouped attention (Eqs. 5-7, Fig. 1).
- :class:`SimpleSepBatchNorm2d`: the squeeze-and-excitation variant (Eqs. 3-4).
- :class:`DomainBatchNorm2d`: the brute-force SepBN with one branch per domain (Fig. 2),
  with :func:`domain_routing` and :func:`best_of_domains` (Table II).
- :func:`set_temperature` and :class:`TemperatureSchedule`: τ of Eq. 5 and its annealing.
- :func:`convert_batchnorm`: swap the ``nn.BatchNorm2d`` layers of any model.
- :class:`AttentionRecorder` and :class:`AttentionHealth`: is the attention alive (entropy,
  set usage, input dependence of π per layer)?
- :mod:`sepbn.nn.functional`: the shared pieces of the math (pooling, Eq. 5 weights, Eq. 6
  mixing, the eval fold).
- :mod:`sepbn.nn.native`: ``SepBatchNorm2d``'s C++ CPU implementation, and
  :func:`sepbn_path`, which forces it or the plain one (the rule is in
  :mod:`sepbn.nn.dispatch`).
"""

from sepbn.nn.attention_health import AttentionHealth, AttentionRecorder, collapsed_layers
from sepbn.nn.convert import convert_batchnorm
from sepbn.nn.dispatch import sepbn_path
from sepbn.nn.domain_batch_norm import (
    DomainBatchNorm2d,
    best_of_domains,
    check_domains,
    domain_routing,
    find_domain_batchnorms,
    num_model_domains,
)
from sepbn.nn.separable_batch_norm import SepBatchNorm2d
from sepbn.nn.separable_norm_base import SeparableNormBase
from sepbn.nn.simple_separable_batch_norm import SimpleSepBatchNorm2d
from sepbn.nn.temperature import TemperatureSchedule, set_temperature

__all__ = [
    "AttentionHealth",
    "AttentionRecorder",
    "DomainBatchNorm2d",
    "SepBatchNorm2d",
    "SeparableNormBase",
    "SimpleSepBatchNorm2d",
    "TemperatureSchedule",
    "best_of_domains",
    "check_domains",
    "collapsed_layers",
    "convert_batchnorm",
    "domain_routing",
    "find_domain_batchnorms",
    "num_model_domains",
    "sepbn_path",
    "set_temperature",
]
