"""A plain Torch-Pruning script on a Hugging Face transformers ViT, with tp_vit_plugins supplying the glue.

Runs offline: a DINOv2-style image classifier built from a config (random weights; use
``Dinov2ForImageClassification.from_pretrained(...)`` where the hub is reachable), half of
its heads and 30 % of its MLP width removed by tp's group-L2 criterion, checked eager vs sdpa,
saved with ``save_pretrained`` and loaded with ``tpv.hosts.transformers.from_pretrained``.

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
    **tpv.vit_pruning_kwargs(model),  # q/k/v named for tp, tokens and LayerScale declared, logits traced
)
pruner.step()
tpv.sync_attention(model, pruner.num_heads)  # num_attention_heads / head_dim per layer, config sizes

with torch.no_grad():
    sdpa = model(example).logits
    model.set_attn_implementation("eager")  # still transformers' own modules
    eager = model(example, output_attentions=True)
print(f"MACs {macs / 1e9:.2f}G -> {tpv.count_macs(model, example) / 1e9:.2f}G, params {params / 1e6:.1f}M -> "
      f"{tpv.utils.count_params(model) / 1e6:.1f}M; eager vs sdpa max |diff| {(sdpa - eager.logits).abs().max():.1e}; "
      f"heads per layer {[a.shape[1] for a in eager.attentions]}")  # fmt: skip
with tempfile.TemporaryDirectory() as tmp:
    model.save_pretrained(tmp)  # safetensors + a config with the pruned sizes
    # DINOv2's config holds the MLP width as an integer mlp_ratio, which 70 % of it is not: the config says
    # null there (transformers alone refuses it) and lists every layer's sizes, which this loader reads
    loaded = tpv.hosts.transformers.from_pretrained(tmp)
    with torch.no_grad():
        print("save_pretrained / from_pretrained max |diff|", float((loaded(example).logits - eager.logits).abs().max()))
