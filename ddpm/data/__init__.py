"""Data: the Flowers-102 download, decoding and preprocessing to one uint8 tensor, the synthetic
flowers, and the dataset file's reader."""
