"""Training: optimiser + schedules (optim.py), the explicit loop, checkpoints, distributed."""
