"""A plain Torch-Pruning script on a Hugging Face transformers ViT, with tp_vit_plugins supplying the glue.

Runs offline: a DINOv2-style image classifier built from a config (random weights; use
``Dinov2ForImageClassification.from_pretrained(...)`` where the hub is reachable), half of
its heads and 30 % of its MLP width removed by tp's group-L2 criterion, checked eager vs sdpa,
saved and loaded.

    python examples/hf_tp_script.py
"""

import tempfile

import torch
import torch_pruning as tp
from transformers import Dinov2Config, Dinov2ForImageClassification

import tp_vit_plugins as tpv

config = Dinov2Config(image_size=224, patch_size=14, hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                      num_labels=1000)  # fmt: skip
model = Dinov2ForImageClassification(config).eval()
example = torch.randn(1, 3, 224, 224)
macs, params = tpv.count_macs(model, example), tpv.utils.count_params(model)

pruner = tp.pruner.BasePruner(
    model,
    example,
    importance=tp.importance.GroupMagnitudeImportance(p=2),
    pruning_ratio=0.3,
    prune_num_heads=True,
    head_pruning_ratio=0.5,
    **tpv.vit_pruning_kwargs(model),  # q/k/v fused for tp, tokens and LayerScale declared, logits traced
)
pruner.step()
tpv.sync_attention(model, pruner.num_heads)

with torch.no_grad():
    fused = model(example).logits
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = False
    eager = model(example).logits
print(f"MACs {macs / 1e9:.2f}G -> {tpv.count_macs(model, example) / 1e9:.2f}G, params {params / 1e6:.1f}M -> "
      f"{tpv.utils.count_params(model) / 1e6:.1f}M; eager vs sdpa max |diff| {(fused - eager).abs().max():.1e}")  # fmt: skip
with tempfile.TemporaryDirectory() as tmp:
    tpv.save_pruned(model, tmp)  # safetensors + the model's own config + per-layer sizes
    loaded = tpv.load_pruned(tmp)
    with torch.no_grad():
        print("save / load max |diff|", float((loaded(example).logits - eager).abs().max()))
