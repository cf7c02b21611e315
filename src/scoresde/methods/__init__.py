"""The methods, on ``score_fn(x, t)`` and an SDE only: losses, sampling (the driver and its step
rules), the likelihood and its bound, guidance, inverse problems and the latent space. They see
no network, config or device; they import only :mod:`scoresde.core`."""
