"""Analyses of trained networks (paper Sec. III-A, Figs. 3 and 4)."""

from sepbn.analysis.attention import attention_by_domain, format_attention_table
from sepbn.analysis.similarity import (
    branch_similarity,
    mean_pairwise_cosine,
    plot_branch_similarity,
)

__all__ = [
    "attention_by_domain",
    "branch_similarity",
    "format_attention_table",
    "mean_pairwise_cosine",
    "plot_branch_similarity",
]
