"""Shared utilities: MRI operators, masks, metrics, checkpoints and small helpers."""
