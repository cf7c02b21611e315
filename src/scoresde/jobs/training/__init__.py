"""Training: the loop, the optimiser and the EMA of weights
(checkpoints: scoresde.infra.checkpoint)."""
