"""LoRA Desk: one small language model, one hot-swapped LoRA adapter per task."""
__version__ = "0.1.0"  # the one place the version is written (pyproject reads it)
