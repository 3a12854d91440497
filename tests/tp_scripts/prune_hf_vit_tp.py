"""A plain Torch-Pruning script for a Hugging Face ViT, in the shape of tp's own transformer examples (tiny, random data).

Its twin, ``prune_hf_vit_plugin.py``, is this file with a plugin importance dropped in;
``tests/test_tp_workflows.py`` runs both and counts the lines that differ.
"""

import argparse

import torch
import torch_pruning as tp
from transformers import ViTConfig, ViTForImageClassification


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="prune a transformers ViT with Torch-Pruning")
    parser.add_argument("--pruning_ratio", default=0.25, type=float)
    parser.add_argument("--head_pruning_ratio", default=0.5, type=float)
    parser.add_argument("--prune_num_heads", default=False, action="store_true")
    parser.add_argument("--global_pruning", default=False, action="store_true")
    parser.add_argument("--iterative_steps", default=1, type=int)
    return parser.parse_args(argv)


def batches(n=2):
    torch.manual_seed(0)
    return [(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))) for _ in range(n)]


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(0)
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=48, num_hidden_layers=2, num_attention_heads=6,
                       intermediate_size=96, num_labels=10)  # fmt: skip
    model = ViTForImageClassification(config).eval()
    example_inputs = torch.randn(1, 3, 32, 32)
    base_macs, base_params = tp.utils.count_ops_and_params(model, example_inputs)
    imp = tp.importance.GroupMagnitudeImportance(p=2)

    num_heads = {}
    for name, m in model.named_modules():
        if name.endswith(".attention") and hasattr(m, "q_proj"):
            num_heads[m.q_proj] = num_heads[m.k_proj] = num_heads[m.v_proj] = m.num_attention_heads

    # fmt: off
    pruner = tp.pruner.MetaPruner(
        model,
        example_inputs,
        importance=imp,
        global_pruning=args.global_pruning,
        pruning_ratio=args.pruning_ratio,
        iterative_steps=args.iterative_steps,
        ignored_layers=[model.classifier],
        num_heads=num_heads,
        prune_num_heads=args.prune_num_heads,
        prune_head_dims=not args.prune_num_heads,
        head_pruning_ratio=args.head_pruning_ratio,
        output_transform=lambda out: out.logits.sum(),
        round_to=2,
    )
    # fmt: on
    for _ in range(args.iterative_steps):
        for group in pruner.step(interactive=True):
            group.prune()

    for name, m in model.named_modules():  # the attention layout after pruning
        if name.endswith(".attention") and hasattr(m, "q_proj"):
            m.num_attention_heads = pruner.num_heads[m.q_proj]
            m.head_dim = m.q_proj.out_features // m.num_attention_heads

    macs, params = tp.utils.count_ops_and_params(model, example_inputs)
    print(f"MACs {base_macs / 1e6:.2f} M -> {macs / 1e6:.2f} M, params {base_params / 1e6:.3f} M -> {params / 1e6:.3f} M")
    return model, pruner


if __name__ == "__main__":
    main()
