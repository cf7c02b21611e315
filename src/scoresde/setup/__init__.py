"""Set-up: the typed config (torch-free), its overrides and rules, the presets, the datasets and
their batches, and ``build`` (config -> SDE, network, score model, loss, sampler options)."""
