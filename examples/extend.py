"""Extending tp_vit_plugins: a new head importance and a new token scorer.

Runs offline on random weights (deit_tiny_patch16_224 by default):

1. ``FocusHeadImportance`` — heads whose attention is focused (low entropy) rank above heads
   that spread it evenly — a :class:`~tp_vit_plugins.core.head_importance.HeadImportance`
   subclass, calibrated on data, then used by ``tpv.ViTPruner`` and by a stock
   ``tp.pruner.BasePruner``;
2. ``peak_received`` — a token scorer for the CP-ViT cascade: the most attention any head gives a
   patch token, passed as ``score=`` to ``tpv.apply_cascade``.

    python examples/extend.py [--model deit_small_patch16_224]
"""

from __future__ import annotations

import argparse

import timm
import torch
import torch_pruning as tp

import tp_vit_plugins as tpv
from tp_vit_plugins.core.calibration import collect_attention
from tp_vit_plugins.core.head_importance import HeadImportance


class FocusHeadImportance(HeadImportance):
    """Heads ranked by how focused their attention is: ``log N - entropy`` of its rows, averaged.

    Only ``_compute_head_scores`` is new: the base class normalises the scores, hands every
    channel of a head its head's score inside tp groups (combined with tp's L2 criterion for
    channels within a head), and stays aligned while ``ViTPruner`` removes heads.
    """

    def _compute_head_scores(self, model, loader, max_batches):
        sums: dict[int, torch.Tensor] = {}

        def observe(block: int, probs: torch.Tensor) -> None:  # probs [B, H, N, N]
            entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1)  # [B, H, N]
            focus = torch.log(torch.tensor(float(probs.shape[-1]))) - entropy
            sums[block] = sums.get(block, 0) + focus.mean(-1).sum(0)  # [H]

        images = collect_attention(model, loader, observe, max_batches=max_batches, progress=False)
        return [(sums[b] / images).clamp_min(0) for b in sorted(sums)]  # one [H] per block, higher = keep


def peak_received(probs: torch.Tensor, num_prefix: int) -> torch.Tensor:
    """Token scorer: ``[B, H, N, N]`` -> ``[B, N - num_prefix]``, the most attention any head gives a patch."""
    received = probs.mean(2)  # [B, H, N]: attention each key receives, averaged over queries
    return received[..., num_prefix:].amax(1)  # per image: no statistic across the batch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="deit_tiny_patch16_224")
    args = parser.parse_args()
    torch.manual_seed(0)
    example = torch.randn(1, 3, 224, 224)
    calib = [torch.randn(4, 3, 224, 224) for _ in range(2)]

    # 1a) the new head importance with ViTPruner: half of every block's heads go
    model = timm.create_model(args.model).eval()
    imp = FocusHeadImportance(normalize_per_layer=True).calibrate(model, calib)
    heads_before = [int(b.attn.num_heads) for b in model.blocks]
    tpv.ViTPruner(model, example, imp, head_pruning_ratio=0.5).step()
    print("ViTPruner + FocusHeadImportance, heads per block:", heads_before, "->", [int(b.attn.num_heads) for b in model.blocks])

    # 1b) the same importance in a stock tp pruner (the plugin supplies kwargs and the attention sync)
    model = timm.create_model(args.model).eval()
    imp = FocusHeadImportance(normalize_per_layer=True).calibrate(model, calib)
    pruner = tp.pruner.BasePruner(
        model, example, importance=imp, pruning_ratio=0.3, prune_num_heads=True, prune_head_dims=False,
        head_pruning_ratio=0.5,
        **tpv.vit_pruning_kwargs(model),
    )  # fmt: skip
    pruner.step()
    tpv.sync_attention(model, pruner.num_heads)
    print("tp BasePruner + FocusHeadImportance (30 % of the MLP width too), heads per block:",
          [int(b.attn.num_heads) for b in model.blocks])  # fmt: skip
    print("logits:", tuple(model(example).shape))

    # 2) the new token scorer in the CP-ViT cascade (and per image: batch or alone, the same logits)
    model = timm.create_model(args.model).eval()
    cascade = tpv.apply_cascade(model, keep_ratio=0.5, score=peak_received)
    with torch.no_grad():
        batch = model(calib[0])
        alone = model(calib[0][:1])
    print("cascade + peak_received, patch tokens per block:", cascade.last.counts)
    print("per image:", torch.allclose(batch[:1], alone, atol=1e-4))
    cascade.remove()


if __name__ == "__main__":
    main()
