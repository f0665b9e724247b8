"""LeGrad (Bousselham et al. 2024) for vision transformers, as torchcam 0.5: for each chosen
block ``l``, the class score of that block's tokens, ``s^l = head(norm(mean_tokens(z^l)))``,
is differentiated w.r.t. the block's per-head attention probabilities; the positive part is
averaged over heads and queries, the prefix keys dropped, and the patch maps averaged over
blocks. One forward serves every block and every target. Blocks are torchvision
``EncoderBlock``s (a batch-first ``nn.MultiheadAttention`` as ``self_attention``, the
layout torchcam supports) or timm ViT blocks (``attn``, whose probabilities are recomputed
explicitly and checked against its own output); anything else is refused by name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from math import isqrt
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from ..classes import explained_classes
from ..modes import eval_mode
from ..outputs import unwrapped
from ..targets import BACKPROP_TARGETS
from .registry import CAMContext, present, require


def _is_timm_attention(module: object) -> bool:
    """timm's ViT ``Attention``: fused q/k/v projection, per-head norms, output norm and projection."""
    return all(
        hasattr(module, a) for a in ("qkv", "num_heads", "head_dim", "q_norm", "k_norm", "norm", "proj", "scale")
    )


def _attention_of(block: nn.Module) -> Optional[nn.Module]:
    attention = getattr(block, "self_attention", None)
    if isinstance(attention, nn.MultiheadAttention):
        return attention
    attention = getattr(block, "attn", None)
    return attention if _is_timm_attention(attention) else None


def _blocks(model: nn.Module, blocks: Optional[Sequence[Union[str, nn.Module]]]) -> list[tuple[str, nn.Module]]:
    named = dict(model.named_modules())
    if blocks is None:
        found = [(n, m) for n, m in named.items() if _attention_of(m) is not None]
    else:
        by_module = {id(m): n for n, m in named.items()}
        found = []
        for block in blocks:
            name = block if isinstance(block, str) else by_module.get(id(block))
            if name not in named:
                raise ValueError(f"legrad: block {block!r} is not a submodule of {type(model).__name__}.")
            found.append((name, named[name]))
    if not found:
        raise ValueError(
            f"legrad: {type(model).__name__} has no attention block (torchvision's self_attention "
            "nn.MultiheadAttention or timm's attn)."
        )
    for name, block in found:
        attention = _attention_of(block)
        if attention is None or (isinstance(attention, nn.MultiheadAttention) and not attention.batch_first):
            raise ValueError(
                f"legrad: block {name!r} needs a batch-first nn.MultiheadAttention as self_attention "
                "(torchvision) or a timm Attention as attn."
            )
    return found


def torchvision_projection(model: nn.Module) -> Callable[[Tensor], Tensor]:
    """The score of a block's tokens: torchvision ``VisionTransformer``: ``heads(ln(mean))``
    (torchcam's); timm ``VisionTransformer``: its own ``forward_head(norm(tokens))``."""
    norm, heads = getattr(getattr(model, "encoder", None), "ln", None), getattr(model, "heads", None)
    if isinstance(norm, nn.Module) and isinstance(heads, nn.Module):
        return lambda tokens: heads(norm(tokens.mean(dim=1)))
    forward_head, final_norm = getattr(model, "forward_head", None), getattr(model, "norm", None)
    if callable(forward_head) and isinstance(final_norm, nn.Module):
        return lambda tokens: forward_head(final_norm(tokens))
    raise ValueError(
        "legrad: pass score_projection (tokens [B, N, D] -> logits [B, C]) for models other than "
        "torchvision's and timm's VisionTransformer."
    )


def _timm_attention(module: Any, x: Tensor) -> tuple[Tensor, Tensor]:
    """timm ``Attention.forward`` (eval, no mask) with its probabilities ``[B, H, N, N]`` explicit
    (``module`` is a timm ``Attention``, read by its submodules' names: untyped here)."""
    b, n, _ = x.shape
    q, k, v = module.qkv(x).reshape(b, n, 3, module.num_heads, module.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = module.q_norm(q), module.k_norm(k)
    probabilities = ((q * module.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
    out = module.norm((probabilities @ v).transpose(1, 2).reshape(b, n, -1))
    if getattr(module, "gate", None) is not None:
        out = out * module.gate(x).sigmoid()
    return module.proj(out), probabilities


def legrad(
    model: nn.Module,
    x: Tensor,
    targets: Union[int, Sequence[int], Tensor, None] = None,
    blocks: Optional[Sequence[Union[str, nn.Module]]] = None,
    backprop: Union[str, Sequence[str]] = "logit",
    score_projection: Optional[Callable[[Tensor], Tensor]] = None,
    prefix_tokens: int = 1,
) -> Union[Tensor, dict[str, Tensor]]:
    """LeGrad maps ``[B, h, w]`` (raw: ReLU'd, not normalised) of the backprop target(s)
    (a dict per name when several); ``blocks`` default to every attention block."""
    names = [backprop] if isinstance(backprop, str) else list(backprop)
    project = score_projection or torchvision_projection(model)
    chosen = _blocks(model, blocks)
    attentions: dict[str, Tensor] = {}
    tokens: dict[str, Tensor] = {}
    handles = _attention_hooks(chosen, attentions, tokens)
    try:
        with eval_mode(model), torch.inference_mode(False), torch.enable_grad():
            logits = model(x.detach().clone().requires_grad_())
            classes = explained_classes(targets, logits)
            scores = {name: project(tokens[name]) for name, _ in chosen}
            result = _relevance_maps(scores, attentions, names, classes, prefix_tokens)
    finally:
        for handle in handles:
            handle.remove()
    return result[names[0]] if isinstance(backprop, str) else result


def _attention_hooks(
    chosen: list[tuple[str, nn.Module]], attentions: dict[str, Tensor], tokens: dict[str, Tensor]
) -> list[RemovableHandle]:
    """Hooks that file each block's attention probabilities (on the graph) in ``attentions``
    and its output tokens in ``tokens``, by block name."""
    handles: list[RemovableHandle] = []
    for name, block in chosen:
        attention = _attention_of(block)
        assert attention is not None  # _blocks refused a block without one
        if isinstance(attention, nn.MultiheadAttention):
            handles.append(attention.register_forward_pre_hook(_ask_weights, with_kwargs=True))
            handles.append(attention.register_forward_hook(_keep_weights(name, attentions), with_kwargs=True))
        else:
            handles.append(attention.register_forward_hook(_timm_weights(name, attentions), with_kwargs=True))
        handles.append(block.register_forward_hook(lambda m, a, out, name=name: tokens.__setitem__(name, out)))
    return handles


def _ask_weights(
    module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``nn.MultiheadAttention`` asked for its per-head probabilities."""
    return args, {**kwargs, "need_weights": True, "average_attn_weights": False}


def _keep_weights(name: str, attentions: dict[str, Tensor]) -> Callable[..., Any]:
    def hook(
        module: nn.MultiheadAttention, args: tuple[Any, ...], kwargs: dict[str, Any], output: tuple[Tensor, Tensor]
    ) -> tuple[Tensor, Tensor]:
        # the output recomputed from the returned probabilities, so they are on the graph
        attention = attentions[name] = output[1]
        value = args[2] if len(args) > 2 else kwargs["value"]
        b, n, d = value.shape
        bias = None if module.in_proj_bias is None else module.in_proj_bias[2 * d :]
        heads = nn.functional.linear(value, module.in_proj_weight[2 * d :], bias)
        heads = heads.reshape(b, n, module.num_heads, d // module.num_heads).transpose(1, 2)
        mixed = (attention @ heads).transpose(1, 2).reshape(b, attention.shape[-2], d)
        return module.out_proj(mixed), attention

    return hook


def _timm_weights(name: str, attentions: dict[str, Tensor]) -> Callable[..., Any]:
    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Tensor) -> Tensor:
        if kwargs.get("attn_mask") is not None or kwargs.get("is_causal"):
            raise ValueError(f"legrad: block {name!r} is called with an attention mask; not supported.")
        recomputed, attentions[name] = _timm_attention(module, args[0] if args else kwargs["x"])
        scale = float(output.detach().abs().max()) + 1e-12
        if not torch.allclose(recomputed.detach(), output.detach(), rtol=0, atol=1e-4 * scale):
            raise ValueError(
                f"legrad: block {name!r}'s attention is not the softmax(q k^T) v it reads "
                f"(a timm version with another Attention?); refusing rather than explain another model."
            )
        return recomputed

    return hook


def _relevance_maps(
    scores: dict[str, Tensor], attentions: dict[str, Tensor], names: list[str], classes: Tensor, prefix_tokens: int
) -> dict[str, Tensor]:
    """Per backprop target, the blocks' mean of ReLU(d score / d attention), averaged over
    heads and queries, prefix keys dropped, on the patch grid ``[B, h, w]``."""
    result = {}
    for t, target in enumerate(names):
        maps = []
        for i, block in enumerate(scores):
            vector = BACKPROP_TARGETS[target](scores[block], classes).detach()
            last = t == len(names) - 1 and i == len(scores) - 1
            (grad,) = torch.autograd.grad(scores[block], attentions[block], vector, retain_graph=not last)
            maps.append(_patch_grid(grad.relu().mean(dim=(1, 2))[:, prefix_tokens:], prefix_tokens))
        result[target] = torch.stack(maps).mean(dim=0).float()
    return result


def _patch_grid(relevance: Tensor, prefix_tokens: int) -> Tensor:
    """``[B, N]`` patch relevances as a square ``[B, h, w]`` grid."""
    side = isqrt(relevance.shape[-1])
    if side * side != relevance.shape[-1]:
        raise ValueError(
            f"legrad: {relevance.shape[-1]} patch tokens after {prefix_tokens} prefix "
            "tokens do not form a square grid; set prefix_tokens."
        )
    return relevance.reshape(-1, side, side)


def legrad_map(ctx: CAMContext) -> Tensor:
    """LeGrad as a registered method: every attention block of a torchvision
    ``VisionTransformer``, one forward for all the call's LeGrad targets (the engine's
    target layer is not used; the patch-grid map is resized to the layer's grid)."""
    require(ctx, "legrad", "model", "inputs", "targets")
    if "legrad" not in ctx.cache:
        model = present(ctx.model, "legrad", "model")
        model = unwrapped(model)  # the network's own blocks, not the engine's logits view
        backprop = present(ctx.backprop, "legrad", "backprop")
        names = list(
            dict.fromkeys(m.backprop for m in ctx.methods if m.compute is legrad_map and m.backprop is not None)
        )
        inputs, targets = present(ctx.inputs, "legrad", "inputs"), present(ctx.targets, "legrad", "targets")
        ctx.cache["legrad"] = legrad(model, inputs, targets, backprop=names or [backprop])
    maps: dict[str, Tensor] = ctx.cache["legrad"]
    return maps[present(ctx.backprop, "legrad", "backprop")]
