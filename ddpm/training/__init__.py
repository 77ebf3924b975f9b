"""Training one network: the loop, EMA, data-parallel ranks, and the live view wired in by the
command."""
