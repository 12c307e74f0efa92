"""covidlib: cheaper labels for COVID-19 CT segmentation.

Reproductions of four papers (see README.md): point supervision and a consistency
loss (P2), region-based active learning with points (P1), volume-level MC-dropout
active learning (P3), and a re-weighted noisy teacher (P4).
"""

__version__ = "0.1.0"
