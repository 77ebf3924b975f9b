"""The diffusion model: beta schedules, the Gaussian process, the U-Net and how the two are built
together on a device."""
