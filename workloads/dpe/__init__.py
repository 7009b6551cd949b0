"""DPE: Diagnostic-driven Progressive Evolution of vision-language models."""

__version__ = "0.1.0"
