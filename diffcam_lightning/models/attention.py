"""Attention without fused kernels, so a CAM loss can take its double backward.

A saliency loss differentiates a CAM, itself a gradient (``create_graph=True``). PyTorch's
fused CPU attention (``scaled_dot_product_attention``) has no double backward (measured:
"derivative for aten::_scaled_dot_product_flash_attention_for_cpu_backward is not
implemented"), so ViT-like networks trained with a CAM loss use the unfused, equal math:
timm's ``fused_attn = False``; Hugging Face's ``eager`` attention.
"""

from __future__ import annotations

from torch import nn


def disable_fused_attention(model: nn.Module) -> int:
    """Switch ``model``'s attention to the unfused path; returns how many modules changed."""
    changed = 0
    for module in model.modules():
        if getattr(module, "fused_attn", False) is True:
            module.fused_attn = False  # type: ignore[assignment]  # torch types Module.__setattr__ for tensors/modules only
            changed += 1
    setter = getattr(model, "set_attn_implementation", None)
    config = getattr(model, "config", None)
    if callable(setter) and getattr(config, "_attn_implementation", "eager") != "eager":
        setter("eager")
        changed += 1
    return changed
