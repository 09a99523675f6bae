"""Models: the SGEM U-Net, its plain-skip ablation, and a registry.

>>> from sgem.models import create_model, list_models
>>> model = create_model("sgem_unet")
"""

from .registry import create_model, describe_model, list_models, register_model
from .sgem_module import SGEM, Linearization
from .unet import UNet, pad_to_multiple


@register_model("sgem_unet", "U-Net whose decoder stage 2 is the SGEM fed with E3 and D1 (the paper)")
def sgem_unet(**kwargs) -> UNet:
    return UNet(decoder2="sgem", **kwargs)


@register_model("unet", "the same U-Net with a plain E3 skip and decoder block in place of the SGEM (ablation)")
def unet(**kwargs) -> UNet:
    return UNet(decoder2="skip", **kwargs)


__all__ = ["SGEM", "Linearization", "UNet", "create_model", "describe_model", "list_models",
           "pad_to_multiple", "register_model"]
