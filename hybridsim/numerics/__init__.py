"""Differentiable, batched, device-agnostic numerical building blocks (no Hydra, no h5py)."""
