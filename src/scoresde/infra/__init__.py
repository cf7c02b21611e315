"""Infrastructure: checkpoints, run folders that never lose work, devices, the ``torchrun``
process group, CPU threads and pictures. It imports only :mod:`scoresde.core`."""
