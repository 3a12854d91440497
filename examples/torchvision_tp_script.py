"""A plain Torch-Pruning script on torchvision's ViT, with a plugin head importance and tp's iterative loop.

Runs offline: ``vit_b_16``'s architecture at 112 px with random weights (``weights=...`` where
the download works), GOHSP's graph head ranking calibrated once, then tp's ``MetaPruner`` in
three iterative steps (half of the heads and 30 % of the MLP width), checked fused vs eager,
saved and loaded.

    python examples/torchvision_tp_script.py
"""

import copy
import tempfile

import torch
import torch_pruning as tp
from torchvision.models import vit_b_16

import tp_vit_plugins as tpv

torch.manual_seed(0)
model = vit_b_16(image_size=112).eval()
torch.nn.init.normal_(model.heads.head.weight, std=0.02)  # torchvision zero-initialises the head: make logits vary
dense = copy.deepcopy(model)
example = torch.randn(1, 3, 112, 112)
calib = [torch.randn(8, 3, 112, 112) for _ in range(2)]

imp = tpv.GraphHeadImportance(progress=False).calibrate(model, calib)  # nn.MultiheadAttention -> timm Attention (exact)
pruner = tp.pruner.MetaPruner(model, example, **tpv.vit_pruning_kwargs(model,
    importance=imp, pruning_ratio=0.3, prune_num_heads=True, head_pruning_ratio=0.5, iterative_steps=3))  # fmt: skip
for _ in range(3):
    pruner.step()  # head scores follow the heads tp removes
tpv.sync_attention(model, pruner.num_heads)

with torch.no_grad():
    fused = model(example)
    with tpv.utils.eager_attention(model):
        eager = model(example)
print("heads per block:", [int(v) for v in pruner.num_heads.values()])
print(f"MACs {tpv.count_macs(dense, example) / 1e9:.2f}G -> {tpv.count_macs(model, example) / 1e9:.2f}G; "
      f"fused vs eager max |diff| {(fused - eager).abs().max():.1e}")  # fmt: skip
with tempfile.TemporaryDirectory() as tmp:
    tpv.save_pruned(model, tmp)
    loaded = tpv.load_pruned(tmp)
    with torch.no_grad():
        print("save / load max |diff|", float((loaded(example) - fused).abs().max()))
