"""GOHSP and VTP sparse training inside a transformers Trainer (PruningCallback), then the hard prune."""

from __future__ import annotations

import pytest
import torch

import tp_vit_plugins as tpv

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")


class _Images(torch.utils.data.Dataset):
    def __init__(self, n: int = 8) -> None:
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(n, 3, 32, 32, generator=g), torch.arange(n) % 10

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"pixel_values": self.x[i], "labels": self.y[i]}


def _vit() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.ViTConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
                                    image_size=32, patch_size=8, num_labels=10)  # fmt: skip
    return transformers.ViTForImageClassification(config)


def _train(model, pruner, tmp_path, epochs=2):
    callback = tpv.hosts.transformers.PruningCallback(pruner)
    args = transformers.TrainingArguments(output_dir=str(tmp_path), num_train_epochs=epochs, per_device_train_batch_size=4,
                                          learning_rate=1e-3, report_to=[], save_strategy="no", logging_strategy="no",
                                          use_cpu=True, disable_tqdm=True)  # fmt: skip
    transformers.Trainer(model=model, args=args, train_dataset=_Images(), callbacks=[callback]).train()
    return callback


@pytest.mark.parametrize("method", ["gohsp", "vtp"])
def test_sparse_training_runs_inside_trainer_and_prunes_at_the_end(method, tmp_path):
    model = _vit()
    x = torch.randn(2, 3, 32, 32)
    params = sum(p.numel() for p in model.parameters())
    if method == "gohsp":
        imp = tpv.GraphHeadImportance(progress=False).calibrate(model, [x])
        pruner = tpv.GOHSPPruner(model, x[:1], imp, pruning_ratio=0.3, fisher_warmup=1)
    else:
        pruner = tpv.VTPPruner(model, x[:1], pruning_ratio=0.3)
    callback = _train(model, pruner, tmp_path)
    assert callback.regularized == 4 and callback.epochs == 2 and callback.pruned  # 2 epochs x 2 optimizer steps
    assert sum(p.numel() for p in model.parameters()) < params
    assert type(model).__name__ == "ViTForImageClassification"
    with torch.no_grad():
        assert torch.isfinite(model.eval()(x).logits).all()


def test_the_callback_needs_a_regularizing_pruner():
    with pytest.raises(TypeError, match="regularize"):
        tpv.hosts.transformers.PruningCallback(object())
