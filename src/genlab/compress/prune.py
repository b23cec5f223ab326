"""Pruning: set the least important weights to zero (unstructured), or remove whole
attention heads and MLP neurons so the matrices really shrink (structured).

Unstructured pruning is global magnitude pruning, the lecture's recipe: the `amount`
fraction of weights with the smallest |w| across all prunable layers together goes to
zero (`torch.nn.utils.prune.global_unstructured`, then `prune.remove`, so the zeros are
plain values in a plain weight). The matrices keep their shape: on a CPU a dense matrix
product with zeros in it costs the same, so this saves nothing by itself until the
weights are stored sparse or run on sparse kernels.

Structured pruning of a GPT removes, in every block, the `amount` fraction of attention
heads and of MLP hidden neurons with the smallest weight norms; the model that comes out
is a smaller GPT (fewer heads, a narrower MLP) and every product in it is smaller.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.utils.prune as tprune

from ..models.gpt import GPT, GPTConfig
from ..models.layers import is_conv1d


def prunable(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, layer) for every Linear (or GPT-2 Conv1D) / convolution weight that pruning may touch. A
    Linear whose weight is tied to an embedding (a language model's output layer) is
    left alone: zeroing it would erase rows of the input embedding too."""
    embedded = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d)
    out = []
    for name, m in model.named_modules():
        w = getattr(m, "weight", None)
        if (isinstance(m, kinds) or is_conv1d(m)) and isinstance(w, nn.Parameter) and id(w) not in embedded:
            out.append((name, m))
    return out


@torch.no_grad()
def magnitude_prune(model: nn.Module, amount: float) -> dict[str, torch.Tensor]:
    """Zero the `amount` fraction of smallest-magnitude weights over all prunable layers
    (made permanent). Returns {layer name: keep mask} for fine-tuning with the zeros held."""
    layers = prunable(model)
    if not layers:
        raise ValueError("the model has no Linear or convolution layers to prune")
    tprune.global_unstructured([(m, "weight") for _, m in layers], pruning_method=tprune.L1Unstructured,
                               amount=amount)
    masks = {}
    for name, m in layers:
        masks[name] = m.weight_mask.detach().bool().clone()
        tprune.remove(m, "weight")
    return masks


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Hold pruned weights at zero (after an optimiser step moved them)."""
    mods = dict(model.named_modules())
    for name, mask in masks.items():
        mods[name].weight.mul_(mask)


def sparsity(model: nn.Module) -> tuple[int, int]:
    """(zero weights, weights) over the prunable layers."""
    zeros = total = 0
    for _, m in prunable(model):
        zeros += int((m.weight == 0).sum())
        total += m.weight.numel()
    return zeros, total


def _keep(scores: torch.Tensor, n_keep: int) -> torch.Tensor:
    """Indices of the n_keep highest scores, in their original order."""
    return torch.topk(scores, n_keep).indices.sort().values


@torch.no_grad()
def prune_gpt_structured(model: GPT, amount: float) -> GPT:
    """A smaller GPT: in each block the `amount` fraction of attention heads and of MLP
    neurons with the lowest weight norms removed (at least one of each kept).

    A head's score is |W_q,h| |W_k,h| + |W_v,h| |W_o,h| (Frobenius norms of its slices of
    the query, key, value and output projections); an MLP neuron's is |row of c_fc| x
    |column of c_proj| -- how large a signal it can pass on."""
    c = model.cfg
    n_head = max(1, c.n_head - round(amount * c.n_head))
    hidden = max(1, c.hidden - round(amount * c.hidden))
    hd, inner = c.hd, c.n_head * c.hd
    new_cfg = GPTConfig(**{**{k: v for k, v in c.to_dict().items() if k != "arch"},
                           "n_head": n_head, "head_dim": hd, "n_inner": hidden})
    small = GPT(new_cfg)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    for i, block in enumerate(model.transformer.h):
        p = f"transformer.h.{i}."
        w_attn, w_o = block.attn.c_attn.weight, block.attn.c_proj.weight    # (3*inner, C), (C, inner)
        q, k, v = (w_attn[j * inner:(j + 1) * inner].view(c.n_head, hd, -1) for j in range(3))
        o = w_o.view(-1, c.n_head, hd).transpose(0, 1)                        # (heads, C, hd)
        norm = lambda t: t.flatten(1).norm(dim=1)                             # noqa: E731
        heads = _keep(norm(q) * norm(k) + norm(v) * norm(o), n_head)
        cols = (heads[:, None] * hd + torch.arange(hd)).flatten()             # kept rows of q/k/v
        rows = torch.cat([cols + j * inner for j in range(3)])
        sd[p + "attn.c_attn.weight"] = w_attn[rows].clone()
        sd[p + "attn.c_proj.weight"] = w_o[:, cols].clone()
        if c.bias:
            sd[p + "attn.c_attn.bias"] = block.attn.c_attn.bias[rows].clone()
        fc, proj = block.mlp.c_fc.weight, block.mlp.c_proj.weight             # (H, C), (C, H)
        neurons = _keep(fc.norm(dim=1) * proj.norm(dim=0), hidden)
        sd[p + "mlp.c_fc.weight"] = fc[neurons].clone()
        sd[p + "mlp.c_proj.weight"] = proj[:, neurons].clone()
        if c.bias:
            sd[p + "mlp.c_fc.bias"] = block.mlp.c_fc.bias[neurons].clone()
    small.load_state_dict(sd)
    return small
