"""Process plumbing that cannot change a result: errors, atomic files, GPU locks, the torchrun
launcher, cluster signals and the console. No stage's code fingerprint includes this folder."""
