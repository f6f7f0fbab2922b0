"""Neural networks: the GLIDE/ADM UNet, the PITI task encoder, the caption encoder and whole models."""

from piti_core.models.build import (
    BUILDERS,
    PitiModel,
    build_base,
    build_model,
    build_text_prior,
    build_upsampler,
    count_parameters,
)
from piti_core.models.encoder import TaskEncoder
from piti_core.models.text import TextEncoder, tokenize
from piti_core.models.unet import UNet

__all__ = [
    "BUILDERS", "PitiModel", "TaskEncoder", "TextEncoder", "UNet", "build_base", "build_model",
    "build_text_prior", "build_upsampler", "count_parameters", "tokenize",
]
