"""A plain Torch-Pruning script on a timm ViT, with tp_vit_plugins supplying the ViT glue.

Runs offline on random weights: prunes heads at head_pruning_ratio=0.5 (3 -> 1 per block:
tp keeps the rounded-down half) and 30 % of the MLP neurons of deit_tiny_patch16_224 with tp's
group-L2 criterion, then checks the model still runs with fused and eager attention.

    python examples/tp_script.py [--model deit_small_patch16_224]
"""

import argparse

import timm
import torch
import torch_pruning as tp

import tp_vit_plugins as tpv

parser = argparse.ArgumentParser()
parser.add_argument("--model", default="deit_tiny_patch16_224")
args = parser.parse_args()

model = timm.create_model(args.model).eval()
example = torch.randn(1, 3, 224, 224)
base_macs, base_params = tpv.count_macs(model, example), tpv.utils.count_params(model)

# 1) plain tp: the plugin only supplies kwargs and the attention sync
pruner = tp.pruner.BasePruner(
    model,
    example,
    importance=tp.importance.GroupMagnitudeImportance(p=2),
    pruning_ratio=0.3,
    prune_num_heads=True,
    prune_head_dims=False,
    head_pruning_ratio=0.5,
    **tpv.vit_pruning_kwargs(model),
)
pruner.step()
tpv.sync_attention(model, pruner.num_heads)

with torch.no_grad(), tpv.utils.eager_attention(model):
    eager = model(example)
fused = model(example).detach()
print(f"heads per block: {[b.attn.num_heads for b in model.blocks]}")
print(
    f"MACs {base_macs / 1e9:.2f}G -> {tpv.count_macs(model, example) / 1e9:.2f}G, "
    f"params {base_params / 1e6:.2f}M -> {tpv.utils.count_params(model) / 1e6:.2f}M, "
    f"max |fused - eager| = {(fused - eager).abs().max():.2e}"
)

# 2) the shorter path: exact head counts, also global (heterogeneous) ones
model = timm.create_model(args.model).eval()
tpv.ViTPruner(model, example, pruning_ratio=0.3, head_pruning_ratio=0.5, global_pruning=True).step()
print(f"ViTPruner, global: heads per block {[b.attn.num_heads for b in model.blocks]}")
