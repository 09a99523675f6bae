"""Models: the SGEM U-Net, its plain-skip ablation, and a registry.

>>> from sgem.models import create_model, list_models
>>> model = create_model("sgem_unet")
"""

from .acm import ACMNet
from .alcnet import ALCNet
from .dnanet import DNANet
from .isnet import ISNet
from .uiunet import UIUNet
from .registry import create_model, describe_model, list_models, register_model
from .sgem_module import SGEM, Linearization
from .unet import UNet, pad_to_multiple


@register_model("sgem_unet", "U-Net whose decoder stage 2 is the SGEM fed with E3 and D1 (the paper)")
def sgem_unet(**kwargs) -> UNet:
    return UNet(decoder2="sgem", **kwargs)


@register_model("unet", "the same U-Net with a plain E3 skip and decoder block in place of the SGEM (ablation)")
def unet(**kwargs) -> UNet:
    return UNet(decoder2="skip", **kwargs)


@register_model("dnanet", "DNANet (Li et al. 2023): dense nested attention, ResNet-18-style CBAM blocks, deep supervision")
def dnanet(**kwargs) -> DNANet:
    return DNANet(**kwargs)


@register_model("acm", "ACM (Dai et al. 2021): ASKC residual U-Net, BasicIRSTD configuration (layers 3-3-3, widths 8-64)")
def acm(**kwargs) -> ACMNet:
    return ACMNet(**{"layers": (3, 3, 3), "widths": (8, 16, 32, 64), **kwargs})


@register_model("alcnet", "ALCNet (Dai et al. 2021) as BasicIRSTD runs it: ASKC ResNet-FPN, layers 4-4-4, widths 8-64")
def alcnet(**kwargs) -> ALCNet:
    return ALCNet(**kwargs)


@register_model("uiunet", "UIU-Net (Wu et al. 2023): U-Net in U-Net, RSU stages, cross-attention fusion, 7 heads")
def uiunet(**kwargs) -> UIUNet:
    return UIUNet(**kwargs)


@register_model("isnet", "ISNet (Zhang et al. 2022): TTOA deformable fusions and a gated shape branch")
def isnet(**kwargs) -> ISNet:
    return ISNet(**kwargs)


__all__ = ["ACMNet", "ALCNet", "DNANet", "ISNet", "UIUNet", "SGEM", "Linearization", "UNet", "create_model", "describe_model", "list_models",
           "pad_to_multiple", "register_model"]
