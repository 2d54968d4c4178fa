"""Small timm and torchvision models with every fused block type (and a CNN
whose stochastic depth is not fused), for the tests of what users do with a
converted model after training: 32x32 inputs, 10 classes, no weights."""

from __future__ import annotations

from typing import Callable, Dict


def models(drop_path_rate: float = 0.3) -> Dict[str, Callable]:
    """name -> a function making the model (timm and torchvision imported by the caller's test)."""
    import timm
    import torchvision
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    return {
        "timm_vit": lambda: timm.create_model("vit_tiny_patch16_224", pretrained=False,
                                              drop_path_rate=drop_path_rate, img_size=32, patch_size=8, depth=4,
                                              num_classes=10),
        "timm_convnext": lambda: timm.create_model("convnext_atto", pretrained=False,
                                                   drop_path_rate=drop_path_rate, num_classes=10),
        "timm_convnextv2": lambda: timm.create_model("convnextv2_atto", pretrained=False,
                                                     drop_path_rate=drop_path_rate, num_classes=10),
        "torchvision_convnext": lambda: ConvNeXt([CNBlockConfig(16, 32, 2), CNBlockConfig(32, None, 2)],
                                                 stochastic_depth_prob=drop_path_rate, num_classes=10),
        "torchvision_efficientnet": lambda: torchvision.models.efficientnet_b0(
            stochastic_depth_prob=drop_path_rate, num_classes=10),
    }


INPUT_SHAPE = (2, 3, 32, 32)
