"""LeGrad (Bousselham et al. 2024) for vision transformers, as torchcam 0.5: for each chosen
block ``l``, the class score of that block's tokens, ``s^l = head(norm(mean_tokens(z^l)))``,
is differentiated w.r.t. the block's per-head attention probabilities; the positive part is
averaged over heads and queries, the prefix keys dropped, and the patch maps averaged over
blocks. One forward serves every block and every target. Blocks are torchvision
``EncoderBlock``s (a batch-first ``nn.MultiheadAttention`` as ``self_attention``), the
layout torchcam supports; anything else is refused by name.
"""

from __future__ import annotations

from math import isqrt
from typing import Callable, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from ..targets import BACKPROP_TARGETS
from .guided import _classes
from .registry import CAMContext, eval_mode, require


def _blocks(model: nn.Module, blocks: Optional[Sequence[Union[str, nn.Module]]]) -> list[tuple[str, nn.Module]]:
    named = dict(model.named_modules())
    if blocks is None:
        found = [(n, m) for n, m in named.items() if isinstance(getattr(m, "self_attention", None), nn.MultiheadAttention)]
    else:
        by_module = {id(m): n for n, m in named.items()}
        found = []
        for block in blocks:
            name = block if isinstance(block, str) else by_module.get(id(block))
            if name not in named:
                raise ValueError(f"legrad: block {block!r} is not a submodule of {type(model).__name__}.")
            found.append((name, named[name]))
    if not found:
        raise ValueError(f"legrad: {type(model).__name__} has no block with a self_attention nn.MultiheadAttention.")
    for name, block in found:
        attention = getattr(block, "self_attention", None)
        if not isinstance(attention, nn.MultiheadAttention) or not attention.batch_first:
            raise ValueError(f"legrad: block {name!r} needs a batch-first nn.MultiheadAttention as self_attention.")
    return found


def torchvision_projection(model: nn.Module) -> Callable[[Tensor], Tensor]:
    """torchvision ``VisionTransformer``'s score of intermediate tokens: ``heads(ln(mean))``."""
    norm, heads = getattr(getattr(model, "encoder", None), "ln", None), getattr(model, "heads", None)
    if not isinstance(norm, nn.Module) or not isinstance(heads, nn.Module):
        raise ValueError("legrad: pass score_projection (tokens [B, N, D] -> logits [B, C]) for models other than "
                         "torchvision's VisionTransformer.")
    return lambda tokens: heads(norm(tokens.mean(dim=1)))


def legrad(
    model: nn.Module,
    x: Tensor,
    targets: Union[None, int, Sequence[int], Tensor] = None,
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
    handles = []

    def ask_weights(name: str):
        def hook(module, args, kwargs):
            return args, {**kwargs, "need_weights": True, "average_attn_weights": False}
        return hook

    def keep_weights(name: str):
        def hook(module: nn.MultiheadAttention, args, kwargs, output):
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

    for name, block in chosen:
        handles.append(block.self_attention.register_forward_pre_hook(ask_weights(name), with_kwargs=True))
        handles.append(block.self_attention.register_forward_hook(keep_weights(name), with_kwargs=True))
        handles.append(block.register_forward_hook(lambda m, a, out, name=name: tokens.__setitem__(name, out)))
    try:
        with eval_mode(model), torch.inference_mode(False), torch.enable_grad():
            logits = model(x.detach().clone().requires_grad_())
            classes = _classes(targets, logits)
            scores = {name: project(tokens[name]) for name, _ in chosen}
            result = {}
            for t, target in enumerate(names):
                maps = []
                for i, (name, _) in enumerate(chosen):
                    vector = BACKPROP_TARGETS[target](scores[name], classes).detach()
                    last = t == len(names) - 1 and i == len(chosen) - 1
                    (grad,) = torch.autograd.grad(scores[name], attentions[name], vector, retain_graph=not last)
                    relevance = grad.relu().mean(dim=(1, 2))[:, prefix_tokens:]
                    side = isqrt(relevance.shape[-1])
                    if side * side != relevance.shape[-1]:
                        raise ValueError(f"legrad: {relevance.shape[-1]} patch tokens after {prefix_tokens} prefix "
                                         "tokens do not form a square grid; set prefix_tokens.")
                    maps.append(relevance.reshape(-1, side, side))
                result[target] = torch.stack(maps).mean(dim=0).float()
    finally:
        for handle in handles:
            handle.remove()
    return result[names[0]] if isinstance(backprop, str) else result


def legrad_map(ctx: CAMContext) -> Tensor:
    """LeGrad as a registered method: every attention block of a torchvision
    ``VisionTransformer``, one forward for all the call's LeGrad targets (the engine's
    target layer is not used; the patch-grid map is resized to the layer's grid)."""
    require(ctx, "legrad", "model", "inputs", "targets")
    if "legrad" not in ctx.cache:
        model = ctx.model.model if hasattr(ctx.model, "key") else ctx.model  # unwrap the engine's logits view
        names = list(dict.fromkeys(m.backprop for m in ctx.methods if m.compute is legrad_map)) or [ctx.backprop]
        ctx.cache["legrad"] = legrad(model, ctx.inputs, ctx.targets, backprop=names)
    return ctx.cache["legrad"][ctx.backprop]
