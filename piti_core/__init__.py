"""piti core runtime: models, diffusion, data, training and evaluation."""

__version__ = "0.1.0"
