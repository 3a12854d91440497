"""Worker functions for the 2-process gloo tests (importable by spawned children)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, TensorDataset

# No qkv bias: the key bias has an exactly-zero gradient (softmax is shift invariant), and
# Adam's first step turns the float noise in it into +-lr, which no two reductions agree on.
TINY = dict(img_size=32, patch_size=8, embed_dim=48, depth=3, num_heads=4, num_classes=10, qkv_bias=False)


def tiny_model(seed: int = 0):
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(seed)
    return VisionTransformer(**TINY).eval()


def data(n: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def _init(rank: int, world: int, port: int) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)


def ranking_worker(rank: int, world: int, port: int, out: str, empty_rank: int | None = None) -> None:
    """Head rankings on a split loader; ``empty_rank``'s loader yields no batch (the others share the data)."""
    import tp_vit_plugins as tpv

    _init(rank, world, port)
    try:
        x, y = data()
        if empty_rank is None:
            mine = slice(rank * len(x) // world, (rank + 1) * len(x) // world)
        else:
            others = [r for r in range(world) if r != empty_rank]
            share = len(x) // len(others)
            mine = slice(0, 0) if rank == empty_rank else slice(others.index(rank) * share, (others.index(rank) + 1) * share)
        loader = DataLoader(TensorDataset(x[mine]), batch_size=4)
        model = tiny_model()
        graph = tpv.GraphHeadImportance(graph="similarity", statistic="per_image", progress=False).calibrate(model, loader)
        flow = tpv.GraphHeadImportance(progress=False).calibrate(model, loader)
        cum = tpv.CumulativeHeadImportance(progress=False).calibrate(model, loader)
        saved = {k: list(v.raw_head_scores.values()) for k, v in (("graph", graph), ("flow", flow), ("cum", cum))}
        if empty_rank is not None:  # GOHSP's Fisher norm, the other all-reduced calibration
            calib = DataLoader(TensorDataset(x[mine], y[mine]), batch_size=4)
            pruner = make_pruner("gohsp", model, x[:1], calib=calib)
            saved["fisher"] = [pruner._fisher[p] for p in pruner.Z]
        if rank == 0:
            torch.save(saved, out)
        dist.barrier()  # every rank done before any tears its gloo group down (an early teardown aborted a peer)
    finally:
        dist.destroy_process_group()


def make_pruner(kind: str, model, example, calib=None):
    """The pruner whose ``regularize`` the DDP step test runs; GOHSP calibrates its Fisher norm on ``calib``."""
    import tp_vit_plugins as tpv

    if kind == "vtp":
        p = tpv.VTPPruner(model, example, reg=1e-2)
        with torch.no_grad():
            for i, g in enumerate(p.gate_parameters()):
                g.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(i))
        return p
    if kind == "gohsp":
        return tpv.GOHSPPruner(model, example, None, pruning_ratio=0.3, rho=0.1).calibrate_fisher(calib, progress=False)
    return None


def ddp_step_worker(rank: int, world: int, port: int, kind: str, out: str) -> None:
    from tp_vit_plugins.core.training import finetune

    _init(rank, world, port)
    try:
        x, y = data(8)
        model = tiny_model()
        mine = TensorDataset(x.chunk(world)[rank], y.chunk(world)[rank])
        pruner = make_pruner(kind, model, x[:1], calib=DataLoader(mine, batch_size=4))  # one batch per rank
        loader = DataLoader(mine, batch_size=8)
        finetune(model, loader, epochs=1, lr=1e-3, progress=False, step_hook=pruner.regularize if pruner else None)
        if rank == 0:
            torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, out)
        dist.barrier()  # every rank done before any tears its gloo group down (an early teardown aborted a peer)
    finally:
        dist.destroy_process_group()
