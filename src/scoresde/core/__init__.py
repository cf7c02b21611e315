"""The maths core: the SDEs and their contract, the one boundary from a network to a score
(``ScoreModel``) and to a classifier's log-probabilities (``NoiseClassifier``), exact Gaussian
mixtures, the data transforms, the random streams, and the torch-free lists of names and
sampler options. It imports nothing else of the package."""
