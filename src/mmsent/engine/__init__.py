"""The engine: one generic training loop, losses, metrics and checkpoints."""
