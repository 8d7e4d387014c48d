"""udit-repro: reproduction harness for U-DiTs (Tian et al., NeurIPS 2024, arXiv 2405.02730)."""

__version__ = "0.1.0"
