"""Sampling: samplers as functions of (seed, index), and the sample stage that writes a variant's
images."""
