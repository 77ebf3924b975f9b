"""Evaluation: feature networks and their weights, the scores (FID, KID, IS), the reference
statistics, FID over training, and the verdict on settings."""
