"""Analyses of trained networks and of runs (paper Sec. III-A, Figs. 3 and 4, Tables II-XI).

- :mod:`~sepbn.analysis.similarity`: Eq. 2 / Fig. 4, how similar the K branches or sets are.
- :mod:`~sepbn.analysis.attention`: every face's SepBN weights π, split by any label;
  :mod:`~sepbn.analysis.attention_report` is ``sepbn analyze attention`` (by yaw bin and
  WFLW attribute, with the health numbers of :mod:`sepbn.nn.attention_health`).
- :mod:`~sepbn.analysis.embedding`: Fig. 3, a t-SNE of aligned shapes or backbone features.
- :mod:`~sepbn.analysis.pose_bins`: faces binned by the yaw of :mod:`sepbn.data.domains`.
- :mod:`~sepbn.analysis.report`: runs beside the paper's tables (``paper_results.yaml``).
"""

from sepbn.analysis.attention import (
    attention_by_domain,
    attention_by_label,
    collect_attention,
    format_attention_table,
)
from sepbn.analysis.similarity import (
    branch_similarity,
    mean_pairwise_cosine,
    plot_branch_similarity,
)

__all__ = [
    "attention_by_domain",
    "attention_by_label",
    "branch_similarity",
    "collect_attention",
    "format_attention_table",
    "mean_pairwise_cosine",
    "plot_branch_similarity",
]
