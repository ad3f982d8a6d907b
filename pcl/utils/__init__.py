"""Utilities every stage uses: atomic writes, torchrun/DDP helpers, phase timing, user-facing errors."""
