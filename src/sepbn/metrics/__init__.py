"""Landmark metrics: NME (Eq. 8), failure rate, AUC, CED and evaluation reports."""

from sepbn.metrics.ced import auc, ced_curve, plot_ced
from sepbn.metrics.nme import FAILURE_THRESHOLD, failure_rate, nme_per_image
from sepbn.metrics.report import (
    WFLW_ATTRIBUTES,
    LandmarkMetrics,
    attribute_table,
    format_attribute_table,
    write_per_image_csv,
    write_summary_json,
)

__all__ = [
    "FAILURE_THRESHOLD",
    "WFLW_ATTRIBUTES",
    "LandmarkMetrics",
    "attribute_table",
    "auc",
    "ced_curve",
    "failure_rate",
    "format_attribute_table",
    "nme_per_image",
    "plot_ced",
    "write_per_image_csv",
    "write_summary_json",
]
