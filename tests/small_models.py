"""Small timm and torchvision models with every fused block type -- the
hand-written forms, generically fused timm blocks (Swin, EVA-02), and a
research-style model with its own pasted DropPath (generic fusion, with a
BatchNorm block and a batch-mean block that must stay unfused) -- and a CNN
whose stochastic depth is not fused, for the tests of what users do with a
converted model after training: 32x32 inputs, 10 classes, no weights."""

from __future__ import annotations

from typing import Callable, Dict

import research_model


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
        "timm_swin": lambda: timm.create_model("swin_tiny_patch4_window7_224", pretrained=False,
                                               drop_path_rate=drop_path_rate, num_classes=10, img_size=32,
                                               window_size=2, embed_dim=16, depths=(1, 1, 2, 1),
                                               num_heads=(1, 1, 2, 2)),
        "timm_eva02": lambda: timm.create_model("eva02_tiny_patch14_224", pretrained=False,
                                                drop_path_rate=drop_path_rate, num_classes=10, img_size=32,
                                                patch_size=8, depth=3, embed_dim=32, num_heads=2),
        "research": lambda: research_model.ResearchNet(drop_path_rate=max(drop_path_rate, 0.1)),
    }


INPUT_SHAPE = (2, 3, 32, 32)
