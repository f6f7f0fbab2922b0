"""Training: the PITI two-stage recipe, the adversarial upsampler stage and prior pretraining."""
