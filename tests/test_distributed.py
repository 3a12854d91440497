"""Distributed calibration, DDP fine-tuning and resume (CPU, gloo, 2 processes)."""

from __future__ import annotations

import functools
import math
import socket

import pytest
import torch
import torch.multiprocessing as mp
from dist_workers import data, ddp_step_worker, make_pruner, ranking_worker, tiny_model
from torch.utils.data import DataLoader, TensorDataset

import tp_vit_plugins as tpv
from tp_vit_plugins.core.training import finetune, random_shift

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_ranking_equals_one_process(tmp_path):
    out = str(tmp_path / "rank0.pt")
    mp.spawn(ranking_worker, args=(2, free_port(), out), nprocs=2, join=True)
    got = torch.load(out, weights_only=True)
    x, _ = data()
    loader = DataLoader(TensorDataset(x), batch_size=4)
    model = tiny_model()
    graph = tpv.GraphHeadImportance(graph="similarity", statistic="per_image", progress=False).calibrate(model, loader)
    flow = tpv.GraphHeadImportance(progress=False).calibrate(model, loader)  # the flow graph's usage sums
    cum = tpv.CumulativeHeadImportance(progress=False).calibrate(model, loader)
    pairs = [(got[k], imp.raw_head_scores.values()) for k, imp in (("graph", graph), ("flow", flow), ("cum", cum))]
    for split, whole in pairs:
        for a, b in zip(split, whole):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-9)
            assert torch.equal(torch.argsort(a), torch.argsort(b))  # identical ranking


@pytest.mark.slow
def test_a_rank_without_batches_adds_nothing(tmp_path):
    """Rank 1's loader is empty: no collective is skipped (no hang), and the rankings equal one process on rank 0's data."""
    out = str(tmp_path / "rank0.pt")
    mp.spawn(ranking_worker, args=(2, free_port(), out, 1), nprocs=2, join=True)
    got = torch.load(out, weights_only=True)
    x, _ = data()
    loader = DataLoader(TensorDataset(x), batch_size=4)  # rank 0 held all the data
    model = tiny_model()
    graph = tpv.GraphHeadImportance(graph="similarity", statistic="per_image", progress=False).calibrate(model, loader)
    flow = tpv.GraphHeadImportance(progress=False).calibrate(model, loader)
    cum = tpv.CumulativeHeadImportance(progress=False).calibrate(model, loader)
    for key, imp in (("graph", graph), ("flow", flow), ("cum", cum)):
        for a, b in zip(got[key], imp.raw_head_scores.values(), strict=True):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-9)
    _, y = data()
    pruner = make_pruner("gohsp", model, x[:1], calib=DataLoader(TensorDataset(x, y), batch_size=4))
    for a, p in zip(got["fisher"], pruner.Z, strict=True):
        torch.testing.assert_close(a, pruner._fisher[p], atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("kind", ["plain", "vtp", "gohsp"])
@pytest.mark.slow
def test_ddp_step_equals_single_process_on_concatenated_batch(tmp_path, kind):
    """GOHSP also calibrates its Fisher norm on each rank's batch: the all-reduced mean equals one process on both."""
    # lr 1e-3: Adam's first step is ~lr * g / (|g| + eps), so entries whose gradient is near eps
    # amplify summation-order noise in proportion to lr
    out = str(tmp_path / "ddp.pt")
    mp.spawn(ddp_step_worker, args=(2, free_port(), kind, out), nprocs=2, join=True)
    ddp = torch.load(out, weights_only=True)
    x, y = data(8)
    model = tiny_model()
    pruner = make_pruner(kind, model, x[:1], calib=DataLoader(TensorDataset(x, y), batch_size=4))  # the ranks' batches
    finetune(
        model,
        DataLoader(TensorDataset(x, y), batch_size=8),
        epochs=1,
        lr=1e-3,
        progress=False,
        step_hook=pruner.regularize if pruner else None,
    )
    single = model.state_dict()
    assert ddp.keys() == single.keys()
    moved = 0.0
    for k in single:
        torch.testing.assert_close(ddp[k], single[k], atol=1e-5, rtol=1e-5)
        moved = max(moved, float((single[k] - tiny_model().state_dict().get(k, single[k])).abs().max()))
    assert moved > 1e-4  # the step really changed the weights


class Interrupt(Exception):
    pass


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path):
    x, y = data(48)

    def loader():
        return DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(5))

    common = dict(epochs=3, lr=5e-3, augment=functools.partial(random_shift, max_shift=2), seed=1, progress=False)
    straight = tiny_model()
    hist = finetune(straight, loader(), checkpoint_dir=tmp_path / "a", **common)

    steps = {"n": 0}

    def die_mid_epoch_two(model, loss):
        steps["n"] += 1
        if steps["n"] == 6 + 3:  # 6 steps per epoch: 3 steps into the second epoch
            raise Interrupt

    victim = tiny_model()
    with pytest.raises(Interrupt):
        finetune(victim, loader(), checkpoint_dir=tmp_path / "b", step_hook=die_mid_epoch_two, **common)
    restarted = tiny_model()  # a fresh process rebuilds the model and resumes
    hist_b = finetune(restarted, loader(), checkpoint_dir=tmp_path / "b", **common)
    assert hist_b["resumed_from"] == 1
    assert hist_b["loss"] == pytest.approx(hist["loss"])
    for k, v in straight.state_dict().items():
        torch.testing.assert_close(restarted.state_dict()[k], v, atol=0, rtol=0)


def test_kd_losses_closed_form():
    from tp_vit_plugins.core.training import distillation_loss

    s = torch.tensor([[2.0, 0.0, -1.0]])
    t = torch.tensor([[0.0, 3.0, 0.0]])
    y = torch.tensor([0])
    ce = torch.nn.functional.cross_entropy(s, y)
    hard = distillation_loss(s, y, t, "hard", alpha=0.25)
    torch.testing.assert_close(hard, 0.75 * ce + 0.25 * torch.nn.functional.cross_entropy(s, torch.tensor([1])))
    soft = distillation_loss(s, y, t, "soft", alpha=1.0, temperature=2.0)
    p_t, log_p_s = torch.softmax(t / 2, -1), torch.log_softmax(s / 2, -1)
    torch.testing.assert_close(soft, 4.0 * (p_t * (p_t.log() - log_p_s)).sum())
    assert distillation_loss(s, y, s, "soft", alpha=1.0) == pytest.approx(0.0, abs=1e-7)


def test_kd_finetune_runs_and_errors():
    x, y = data(16)
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    student, teacher = tiny_model(1), tiny_model(2)
    hist = finetune(student, loader, loader, epochs=1, teacher=teacher, kd="soft", progress=False)
    assert len(hist["loss"]) == 1 and 0.0 <= hist["val_acc"][0] <= 1.0
    with pytest.raises(ValueError, match="needs a teacher"):
        finetune(student, loader, epochs=1, kd="hard")
    with pytest.raises(ValueError, match="kd must be"):
        finetune(student, loader, epochs=1, teacher=teacher, kd="feature")


def test_schedule_span_splits_one_schedule_across_calls(monkeypatch):
    x, y = data(48)
    loader = DataLoader(TensorDataset(x, y), batch_size=8)  # 6 steps per epoch
    lrs: list[float] = []

    class Recording(torch.optim.AdamW):
        def step(self, closure=None):
            lrs.append(self.param_groups[0]["lr"])
            return super().step(closure)

    monkeypatch.setattr(torch.optim, "AdamW", Recording)
    common = dict(lr=1e-2, warmup_epochs=1.0, progress=False)
    finetune(tiny_model(), loader, epochs=3, **common)
    whole, lrs[:] = list(lrs), []
    finetune(tiny_model(), loader, epochs=2, schedule_span=(0, 3), **common)  # e.g. sparse training
    finetune(tiny_model(), loader, epochs=1, schedule_span=(2, 3), **common)  # the fine-tune after the prune
    assert lrs == pytest.approx(whole)
    # step 12 of 18: past the 6 warm-up steps, cosine at (12 - 6) / (18 - 6)
    assert lrs[12] == pytest.approx(1e-2 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    for bad in ((0, 1), (-1, 3), (2, 2)):
        with pytest.raises(ValueError, match="schedule_span"):
            finetune(tiny_model(), loader, epochs=2, schedule_span=bad, **common)
