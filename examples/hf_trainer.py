"""GOHSP inside a Hugging Face ``Trainer``, then a distillation fine-tune of the pruned model — all transformers.

Offline: the demo's trained MNIST ViT (shipped with the package) becomes a
``ViTForImageClassification`` (``tpv.hosts.transformers.from_timm``, equal logits); GOHSP's sparse
training runs inside ``Trainer`` through ``tpv.hosts.transformers.PruningCallback``
(``regularize`` each optimizer step, ``update_regularizer`` each epoch, the hard prune at the end),
then the pruned model is fine-tuned with the dense one as teacher. Prints test accuracy and size
after each phase.

    pip install ".[demo,hf]" accelerate && python examples/hf_trainer.py
"""

import copy

import torch
import torch.nn.functional as F
from transformers import Trainer, TrainingArguments

import tp_vit_plugins as tpv
from tp_vit_plugins.demo.embedded import embedded_model


class Split(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"pixel_values": self.x[i], "labels": self.y[i]}


class DistillTrainer(Trainer):
    """Cross-entropy plus soft distillation from a frozen teacher (temperature 2)."""

    def __init__(self, *args, teacher, **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher = teacher.eval()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = model(pixel_values=inputs["pixel_values"])
        with torch.no_grad():
            soft = self.teacher(pixel_values=inputs["pixel_values"]).logits
        kd = F.kl_div(F.log_softmax(out.logits / 2, -1), F.softmax(soft / 2, -1), reduction="batchmean") * 4
        loss = 0.5 * F.cross_entropy(out.logits, inputs["labels"]) + 0.5 * kd
        return (loss, out) if return_outputs else loss


def arguments(epochs):
    return TrainingArguments(output_dir="hf_trainer_out", num_train_epochs=epochs, per_device_train_batch_size=64,
                             learning_rate=5e-4, weight_decay=0.05, report_to=[], save_strategy="no",
                             logging_strategy="no", use_cpu=True, disable_tqdm=True)  # fmt: skip


@torch.no_grad()
def report(phase, model):
    acc = (model.eval()(pixel_values=split.x_test).logits.argmax(-1) == split.y_test).float().mean()
    print(f"{phase}: test accuracy {float(acc):.2%}, {tpv.utils.count_params(model) / 1e3:.0f}K params")


torch.manual_seed(0)
timm_model, split, _ = embedded_model(progress=False)
model = tpv.hosts.transformers.from_timm(timm_model)  # a transformers ViT with the trained weights
dense = copy.deepcopy(model)
train = Split(split.x_train, split.y_train)
report("dense", model)

imp = tpv.GraphHeadImportance(progress=False).calibrate(model, [split.x_train[:128]])
pruner = tpv.GOHSPPruner(model, split.x_train[:1], imp, pruning_ratio=0.5)  # half of the parameters go
callback = tpv.hosts.transformers.PruningCallback(pruner)
Trainer(model=model, args=arguments(2), train_dataset=train, callbacks=[callback]).train()
report(f"GOHSP in Trainer, pruned (heads {pruner.heads_per_layer()})", model)

DistillTrainer(model=model, args=arguments(2), train_dataset=train, teacher=dense).train()
report("after 2 distillation epochs", model)
