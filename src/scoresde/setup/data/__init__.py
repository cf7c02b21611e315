"""Data: toy 2-D distributions, Gaussian mixtures with exact scores, and image datasets."""
