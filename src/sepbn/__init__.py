"""sepbn: Separable Batch Normalization and Cross-protocol Network Training for
robust facial landmark localization (Jin, Feng, Yang, Kittler)."""

__version__ = "0.1.0"
