"""Jobs on runs: the trained-run types, sampling and likelihoods of a run, conditioning, the
image jobs, the demo, training and evaluation."""
