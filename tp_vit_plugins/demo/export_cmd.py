"""``tp-vit export SAVED_DIR OUT.onnx``: a saved pruned model to ONNX, checked and timed in onnxruntime."""

from __future__ import annotations

import torch

from ..core.io import load_pruned
from ..export import export_onnx, onnx_latency

__all__ = ["cmd_export", "example_input"]


def example_input(model: torch.nn.Module) -> torch.Tensor:
    """One random image of the size the model was built for (``[1, C, H, W]``)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    embed = getattr(model, "patch_embed", None)
    size = getattr(embed, "img_size", None)
    chans = getattr(getattr(embed, "proj", None), "in_channels", None)
    if size is not None and chans is not None:
        return torch.randn(1, int(chans), *(int(s) for s in size))
    if "input_size" in cfg:
        return torch.randn(1, *cfg["input_size"])
    hf = getattr(model, "config", None)  # transformers: the config's image size
    if hf is not None and hasattr(hf, "image_size"):
        return torch.randn(1, int(getattr(hf, "num_channels", 3)), int(hf.image_size), int(hf.image_size))
    raise ValueError(f"cannot tell the input size of {type(model).__name__}")


def cmd_export(saved_dir: str, onnx_path: str, latency_batch_sizes: tuple[int, ...] = (1, 64), threads: int | None = None) -> int:
    """Load ``saved_dir``, export it to ``onnx_path``, print the check and the onnxruntime latency."""
    if threads:
        torch.set_num_threads(threads)
    model = load_pruned(saved_dir).eval()
    x = example_input(model)
    report = export_onnx(model, x, onnx_path)
    print(f"exported {saved_dir} -> {report.path} ({report.size_bytes / 1e6:.1f} MB, dynamic batch)")
    print(f"onnxruntime vs PyTorch at batch sizes {list(report.checked_batch_sizes)}: max |diff| {report.max_abs_diff:.2e}")
    for bs in latency_batch_sizes:
        seconds = onnx_latency(report.path, x, bs, threads)
        print(f"onnxruntime bs {bs}: {1e3 * seconds:.2f} ms per batch")
    return 0
