"""Analyses of trained networks (paper Sec. III-A, Fig. 4)."""

from sepbn.analysis.similarity import (
    branch_similarity,
    mean_pairwise_cosine,
    plot_branch_similarity,
)

__all__ = ["branch_similarity", "mean_pairwise_cosine", "plot_branch_similarity"]
