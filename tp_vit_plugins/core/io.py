"""Safe save/load of pruned ViTs: safetensors weights + a JSON spec, no pickle.

``save_pruned(model, path)`` writes a directory::

    path/
      model.safetensors   every parameter and persistent buffer
      spec.json           the host, its class + structural description + every pruned dimension,
                          and an applied CP-ViT cascade (its options and fixed token counts)

``load_pruned(path)`` asks the host named in the spec (:meth:`~tp_vit_plugins.hosts.Host.rebuild`)
to rebuild the skeleton (allow-listed classes only, never unpickling anything), resize every
tensor and module attribute to the saved shapes, restore each attention's layout, and load the
weights strictly, then applies the saved cascade again, so outputs are identical to the saved model.
"""

from __future__ import annotations

import json
import os

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..hosts import host_for, registered_hosts
from .inputs import KEPT_BUFFER, select_outputs, selected_outputs

__all__ = ["save_pruned", "load_pruned", "FORMAT"]

#: Format tag written into every spec.
FORMAT = "tp_vit_plugins.pruned/1"
_WEIGHTS, _SPEC = "model.safetensors", "spec.json"
#: The host of a spec that names none (written before specs named their host).
_DEFAULT_HOST = "timm"


def save_pruned(model: nn.Module, path: str | os.PathLike) -> str:
    """Save a (pruned) ViT as safetensors weights plus a JSON spec.

    Args:
        model: A supported timm (``VisionTransformer``, ``VisionTransformerDistilled``, ``Beit``,
            ``Eva``, ``Cait``, ``SwinTransformer``) or transformers model, pruned or not. Call
            :func:`~tp_vit_plugins.sync_attention` after pruning first.
        path: Directory to create (existing files of the same names are overwritten).

    An applied CP-ViT cascade (:func:`~tp_vit_plugins.apply_cascade`) is saved with the model:
    its options and its calibrated per-block token counts.

    Returns:
        The directory path.

    Raises:
        TypeError: ``model`` is not a class its host can save.
        ValueError: An attention module is out of sync with its weights, or the applied cascade
            cannot be stored (a custom token scorer); nothing is written then.
        NotImplementedError: A layer variant the spec cannot describe (custom norm/MLP).
    """
    from ..cpvit.patch import find_cascade  # the methods build on core: imported when used

    host = host_for(model)
    cascade = find_cascade(model)
    record = cascade.record() if cascade is not None else None  # refused before anything is written
    spec, tensors = host.save_spec(model)
    selected = {}  # per-block input dims (core.inputs): the host rebuilds the norms, the selection is applied after
    for name, module in model.named_modules():
        keep = selected_outputs(module)
        if keep is not None:
            key = f"{name}.{KEPT_BUFFER}"
            tensors.pop(key, None)
            spec.get("shapes", {}).pop(key, None)
            selected[name] = [int(i) for i in keep.tolist()]
    if selected:
        spec["selected_outputs"] = selected
    if record is not None:
        spec["cascade"] = record
    return _write(path, tensors, {"format": FORMAT, "host": host.name, **spec})


def _write(path: str | os.PathLike, tensors: dict[str, torch.Tensor], spec: dict) -> str:
    """Write weights and spec under temporary names, then rename: an interrupted save leaves no half-written model."""
    os.makedirs(path, exist_ok=True)
    weights, spec_file = os.path.join(path, _WEIGHTS), os.path.join(path, _SPEC)
    try:  # write both under temporary names, then rename: an interrupted save leaves no half-written model
        save_file(tensors, weights + ".tmp", metadata={"format": FORMAT})
        with open(spec_file + ".tmp", "w") as f:
            json.dump(spec, f, indent=1)
        # safetensors writes 0600; the weights get the spec's mode (the user's umask), as any file they write
        os.chmod(weights + ".tmp", os.stat(spec_file + ".tmp").st_mode & 0o777)
        os.replace(weights + ".tmp", weights)
        os.replace(spec_file + ".tmp", spec_file)
    finally:
        for leftover in (weights + ".tmp", spec_file + ".tmp"):
            if os.path.exists(leftover):
                os.remove(leftover)
    return os.fspath(path)


def load_pruned(path: str | os.PathLike, map_location: str | torch.device = "cpu", cascade: bool = True) -> nn.Module:
    """Rebuild a model saved by :func:`save_pruned`; no pickle is involved.

    Args:
        path: Directory written by :func:`save_pruned`.
        map_location: Device for the weights.
        cascade: Apply the saved CP-ViT cascade again (with its saved token counts; find it with
            :func:`tp_vit_plugins.cpvit.find_cascade`); ``False``: the model without it.

    Returns:
        The model in eval mode, with outputs identical to the saved one.

    Raises:
        FileNotFoundError: The directory lacks ``model.safetensors`` or ``spec.json``.
        ValueError: Unknown format / host / class, a damaged spec or weights file, or weights that
            do not match the spec; every message names the file.
    """
    wpath, spath = os.path.join(path, _WEIGHTS), os.path.join(path, _SPEC)
    for p in (wpath, spath):
        if not os.path.isfile(p):
            raise FileNotFoundError(f"{p} not found; was {path!r} written by tpv.save_pruned?")
    try:
        with open(spath) as f:
            spec = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{spath} is not valid JSON ({e.msg} at line {e.lineno}); re-save the model with tpv.save_pruned") from e
    if not isinstance(spec, dict):
        raise ValueError(f"{spath} holds no spec object; re-save the model with tpv.save_pruned")
    if spec.get("format") != FORMAT:
        raise ValueError(f"{spath}: unsupported format {spec.get('format')!r}, expected {FORMAT!r}")
    name = spec.get("host", _DEFAULT_HOST)
    hosts = {h.name: h for h in registered_hosts()}
    if name not in hosts:
        raise ValueError(f"{spath}: host {name!r} is not one of the registered hosts {sorted(hosts)}")
    try:
        state = load_file(wpath, device="cpu")
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for a damaged file
        raise ValueError(f"{wpath} cannot be read as safetensors ({e}); re-save the model with tpv.save_pruned") from e
    try:
        model = hosts[name].rebuild(spec, state)
        for norm_name, keep in (spec.get("selected_outputs") or {}).items():
            select_outputs(model.get_submodule(norm_name), keep)
    except (ValueError, AttributeError) as e:
        raise ValueError(f"{spath}: {e}") from e
    model = model.to(map_location).eval()
    if cascade and spec.get("cascade") is not None:
        from ..cpvit.patch import restore_cascade

        try:
            restore_cascade(model, spec["cascade"])
        except (ValueError, TypeError) as e:
            raise ValueError(
                f"{spath}: the saved cascade cannot be applied ({e}); load_pruned(path, cascade=False) loads the model without it"
            ) from e
    return model
