"""Every Hugging Face transformers family with a DropPath module, as a tiny
model built from a config (no weights): the table the transformers sweep
(tests/test_transformers_sweep.py) runs over. Families that cannot be built
here say why (a missing package, a model that needs more than a config)."""

from __future__ import annotations

from typing import Callable, Dict, Optional

import torch

VIT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
           patch_size=8)
SWIN = dict(image_size=32, patch_size=4, embed_dim=16, depths=[2, 2], num_heads=[2, 2], window_size=4)
CONVNEXT = dict(hidden_sizes=[8, 16], depths=[1, 2], num_stages=2, image_size=32)
STAGES2 = dict(num_encoder_blocks=2, depths=[1, 2], hidden_sizes=[16, 32], patch_sizes=[7, 3], strides=[4, 2],
               num_attention_heads=[1, 2], mlp_ratios=[2, 2])
# No randomness inside the branches: the same seed then draws the same masks
# in every form (stock, converted, fused, skip).
NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, attention_dropout=0.0,
                  hidden_dropout=0.0, dropout=0.0, drop_rate=0.0, attn_drop_rate=0.0)


def _image(batch: int, size=(32, 32), channels: int = 3) -> dict:
    return {"pixel_values": torch.randn(batch, channels, *size)}


# family -> (model class name, config kwargs, inputs(batch) -> kwargs)
FAMILIES: Dict[str, tuple] = {
    "beit": ("BeitModel", dict(VIT, use_relative_position_bias=True, layer_scale_init_value=0.1), _image),
    "bit": ("BitModel", dict(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], num_groups=4), _image),
    "convnext": ("ConvNextModel", CONVNEXT, _image),
    "convnextv2": ("ConvNextV2Model", CONVNEXT, _image),
    # (depth must exceed the stage index: Cvt picks stage i's rate by i among its layers' rates)
    "cvt": ("CvtModel", dict(embed_dim=[16, 32, 48], num_heads=[1, 2, 3], depth=[1, 2, 3]), _image),
    "data2vec": ("Data2VecVisionModel", dict(VIT, use_relative_position_bias=True, layer_scale_init_value=0.1),
                 _image),
    "dinov2": ("Dinov2Model", dict(VIT, mlp_ratio=2, layerscale_value=0.5), _image),
    "dinov2_with_registers": ("Dinov2WithRegistersModel", dict(VIT, mlp_ratio=2, num_register_tokens=2), _image),
    "dinov3_convnext": ("DINOv3ConvNextModel", dict(hidden_sizes=[8, 16], depths=[1, 2], image_size=32), _image),
    "dinov3_vit": ("DINOv3ViTModel", dict(VIT), _image),
    "donut": ("DonutSwinModel", SWIN, _image),
    "eomt": ("EomtForUniversalSegmentation", dict(VIT, mlp_ratio=2, num_blocks=1, num_queries=4), _image),
    "eomt_dinov3": ("EomtDinov3ForUniversalSegmentation", dict(VIT, num_blocks=1, num_queries=4), _image),
    "florence2": ("Florence2VisionBackbone", dict(depths=[1, 1], embed_dim=[16, 32], num_heads=[2, 2],
                                                  num_groups=[2, 2], window_size=2),
                  lambda b: {"hidden_states": torch.randn(b, 3, 32, 32)}),
    "focalnet": ("FocalNetModel", dict(embed_dim=16, depths=[1, 1], hidden_sizes=[32, 32], image_size=32,
                                       patch_size=4, focal_levels=[2, 2], focal_windows=[3, 3]), _image),
    "glpn": ("GLPNModel", dict(STAGES2, sr_ratios=[2, 1]), _image),
    "hiera": ("HieraModel", dict(embed_dim=16, depths=[1, 1], num_heads=[1, 2], image_size=[64, 64],
                                 num_query_pool=1), lambda b: _image(b, (64, 64))),
    "maskformer": ("MaskFormerSwinModel", SWIN, _image),
    "mgp_str": ("MgpstrForSceneTextRecognition", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                      mlp_ratio=2, image_size=[32, 64], patch_size=8),
                lambda b: _image(b, (32, 64))),
    "pixio": ("PixioModel", dict(VIT, mlp_ratio=2), _image),
    "poolformer": ("PoolFormerModel", dict(num_encoder_blocks=2, depths=[1, 2], hidden_sizes=[16, 32],
                                           patch_sizes=[7, 3], strides=[4, 2], padding=[2, 1], mlp_ratio=2.0),
                   _image),
    "pvt": ("PvtModel", dict(STAGES2, patch_sizes=[4, 2], sequence_reduction_ratios=[2, 1], image_size=32),
            _image),
    "pvt_v2": ("PvtV2Model", dict(STAGES2, sr_ratios=[2, 1]), _image),
    "qianfan_ocr": ("QianfanOCRVisionModel", dict(VIT, image_size=[32, 32], patch_size=[8, 8]), _image),
    "radio": ("RadioModel", dict(VIT, mlp_ratio=2.0), _image),
    "sapiens2": ("Sapiens2Model", dict(VIT), _image),
    "segformer": ("SegformerModel", dict(STAGES2, sr_ratios=[2, 1]), _image),
    "swiftformer": ("SwiftFormerModel", dict(depths=[1, 1, 1, 1], embed_dims=[8, 16, 24, 32], image_size=32),
                    _image),
    "swin": ("SwinModel", SWIN, _image),
    "swinv2": ("Swinv2Model", SWIN, _image),
    "timesformer": ("TimesformerModel", dict(VIT, num_frames=2),
                    lambda b: {"pixel_values": torch.randn(b, 2, 3, 32, 32)}),
    "tipsv2": ("Tipsv2VisionModel", dict(VIT, mlp_ratio=2), _image),
    "vitdet": ("VitDetModel", dict(VIT, pretrain_image_size=32), _image),
    "vjepa2": ("VJEPA2Model", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
                                   crop_size=32, patch_size=8, frames_per_clip=2, tubelet_size=2,
                                   pred_hidden_size=16, pred_num_hidden_layers=1, pred_num_attention_heads=2,
                                   pred_num_mask_tokens=2),
               lambda b: {"pixel_values_videos": torch.randn(b, 2, 3, 32, 32)}),
    "x_clip": ("XCLIPVisionModel", dict(VIT, num_frames=2), _image),
}

# family -> why it is not in the sweep
NOT_BUILT: Dict[str, str] = {
    "dinat": "needs the natten package (neighbourhood attention kernels)",
    "clap": "the audio tower needs a spectrogram geometry matched to its patching (not a plain image)",
    "grounding_dino": "needs a text encoder and a detection backbone beside the fusion layers holding DropPath",
    "mm_grounding_dino": "needs a text encoder and a detection backbone beside the fusion layers holding DropPath",
    "rf_detr": "a detector whose DropPath sits in its DINOv2 backbone (swept as dinov2)",
    "seggpt": "needs prompt images and masks with the input, at fixed geometry",
    "videomt": "needs video segmentation inputs at fixed geometry",
    "swin2sr": "builds, but has no DropPath: its stages never pass their drop rates on to their layers "
               "(transformers 5.24)",
}


def build(family: str, drop_path_rate: float = 0.3, dtype: torch.dtype = torch.float32):
    """(model, inputs(batch)) for a family, seeded: the same weights every call."""
    import transformers

    class_name, config_kwargs, inputs = FAMILIES[family]
    cls = getattr(transformers, class_name)
    defaults = cls.config_class().to_dict()
    no_dropout = {k: v for k, v in NO_DROPOUT.items() if isinstance(defaults.get(k), float)}
    config = cls.config_class(**config_kwargs, **no_dropout)
    # Set past the config's type check: some families declare the rate an int
    # (Timesformer) or a per-stage list (Cvt).
    rate = defaults.get("drop_path_rate")
    object.__setattr__(config, "drop_path_rate",
                       [drop_path_rate] * len(rate) if isinstance(rate, list) else drop_path_rate)
    torch.manual_seed(0)
    model = cls(config).to(dtype)
    return model, lambda batch: {k: v.to(dtype) for k, v in inputs(batch).items()}


def main_output(outputs) -> torch.Tensor:
    """The output a training loss would use (the first tensor the model returns)."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    for value in (outputs.values() if hasattr(outputs, "values") else outputs):
        if isinstance(value, torch.Tensor):
            return value
        if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
            return value[0]
    raise TypeError(f"no tensor output in {type(outputs).__name__}")


def drop_path_modules(model) -> list:
    return [m for m in model.modules() if type(m).__name__.endswith("DropPath")]


def loss_of(model, inputs: dict, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    return main_output(model(**inputs)).double().square().mean()


Maker = Callable[[], object]
OptionalReason = Optional[str]


def checkpointing_enable(model, **checkpoint_kwargs) -> None:
    """transformers' activation checkpointing, by its 5.x name where it has it
    (``gradient_checkpointing_enable``, the older name users call, warns that
    it is deprecated there; both end in the same code)."""
    kwargs = checkpoint_kwargs or None
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
