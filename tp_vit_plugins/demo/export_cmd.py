"""``tp-vit export SAVED_DIR OUT.onnx``: a saved pruned model to ONNX, checked and timed in onnxruntime."""

from __future__ import annotations

import sys

import torch

from ..core.io import load_pruned
from ..cpvit.patch import find_cascade
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


def cmd_export(
    saved_dir: str,
    onnx_path: str,
    latency_batch_sizes: tuple[int, ...] = (1, 64),
    threads: int | None = None,
    cascade: bool = True,
) -> int:
    """Load ``saved_dir``, export it to ``onnx_path``, print the check and the onnxruntime latency.

    The saved CP-ViT cascade is loaded and exported with the model unless ``cascade=False``;
    one that cannot be exported is refused in one line (exit 2).
    """
    if threads:
        torch.set_num_threads(threads)
    model = load_pruned(saved_dir, cascade=cascade).eval()
    applied = find_cascade(model)
    x = example_input(model)
    try:
        report = export_onnx(model, x, onnx_path)
    except Exception as e:  # noqa: BLE001 - any exporter failure: one line naming the way out
        if applied is None:
            raise
        first = str(e).splitlines()[0] if str(e) else ""
        print(f"tp-vit export: error: the saved CP-ViT cascade does not export ({type(e).__name__}: {first}); "
              "--no-cascade exports the model without it", file=sys.stderr)  # fmt: skip
        return 2
    what = "" if applied is None else f" with its CP-ViT cascade (patch tokens per block {applied.counts})"
    print(f"exported {saved_dir}{what} -> {report.path} ({report.size_bytes / 1e6:.1f} MB, dynamic batch)")
    print(f"onnxruntime vs PyTorch at batch sizes {list(report.checked_batch_sizes)}: max |diff| {report.max_abs_diff:.2e}")
    for bs in latency_batch_sizes:
        seconds = onnx_latency(report.path, x, bs, threads)
        print(f"onnxruntime bs {bs}: {1e3 * seconds:.2f} ms per batch")
    return 0
