"""ddpm-pipeline: reproducible DDPM sweeps, from download to an HTML report."""

__version__ = "0.1.0"
