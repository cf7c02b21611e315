"""Training: the loop, EMA of weights and atomic safetensors checkpoints."""
