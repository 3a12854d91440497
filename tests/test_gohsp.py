"""GOHSP: graph maths, GraphHeadImportance and the ADMM GOHSPPruner."""

from __future__ import annotations

import copy
import warnings

import networkx as nx
import numpy as np
import pytest
import torch
import torch_pruning as tp
from conftest import fused_and_eager, make_model, snapshot, state_equal
from torch.utils.data import DataLoader, TensorDataset

import tp_vit_plugins as tpv
from tp_vit_plugins.gohsp.graph import build_head_graph, head_similarity, pagerank_head_scores
from tp_vit_plugins.hosts.timm.structure import attention_modules


def closed_form_pagerank(weights: np.ndarray, damping: float) -> np.ndarray:
    """pr = (1-d)/n (I - d P^T)^-1 1 with P the row-normalised weight matrix."""
    n = len(weights)
    P = weights / weights.sum(1, keepdims=True)
    return np.linalg.solve(np.eye(n) - damping * P.T, np.full(n, (1 - damping) / n))


def test_pagerank_on_hand_built_two_layer_graph():
    sim = torch.tensor([[0.9, 0.1], [0.2, 0.6]], dtype=torch.float64)
    g = build_head_graph([sim])
    scores = pagerank_head_scores(g, [2, 2], damping=0.85)
    W = np.zeros((4, 4))  # nodes (0,0) (0,1) (1,0) (1,1)
    W[:2, 2:] = sim.numpy()
    W[2:, :2] = sim.numpy().T
    expected = closed_form_pagerank(W, 0.85)
    got = torch.cat(scores).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-8)
    ref = nx.pagerank(g, alpha=0.85, weight="weight", tol=1e-12)
    np.testing.assert_allclose(got, [ref[(0, 0)], ref[(0, 1)], ref[(1, 0)], ref[(1, 1)]], atol=1e-8)
    assert got.sum() == pytest.approx(1.0)


def test_head_similarity_closed_form():
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    b = torch.tensor([[-1.0, 0.0], [0.0, 2.0]])
    s = head_similarity(a, b, "abs_cosine")
    torch.testing.assert_close(s, torch.tensor([[1.0, 0.0], [2**-0.5, 2**-0.5]], dtype=torch.float64))
    assert head_similarity(a, b, "relu_cosine")[0, 0] == 0.0
    with pytest.raises(ValueError, match="unknown similarity"):
        head_similarity(a, b, "dot")


def test_head_scores_broadcast_to_channels_of_a_tp_group(x):
    model = make_model("vit")
    imp = tpv.GraphHeadImportance(combine="head")
    a0 = model.blocks[0].attn
    imp.set_head_scores({a0.qkv: torch.tensor([1.0, 2.0, 3.0]), model.blocks[1].attn.qkv: torch.tensor([2.0, 2.0, 2.0])})
    DG = tp.DependencyGraph().build_dependency(
        model,
        x,
        **{k: v for k, v in tpv.vit_pruning_kwargs(model).items() if k in ("unwrapped_parameters", "customized_pruners")},
    )
    group = DG.get_pruning_group(a0.proj, tp.prune_linear_in_channels, list(range(48)))
    scores = imp(group)
    mean = 12.0 / 6  # normalised to mean 1 over all six heads
    head = torch.tensor([1.0, 2.0, 3.0]).repeat_interleave(16) / mean
    l2 = tp.importance.GroupMagnitudeImportance(p=2)(group)
    relative = l2 / l2.view(3, 16).mean(1).repeat_interleave(16)  # base criterion relative to its head's mean
    torch.testing.assert_close(scores, head * relative)
    torch.testing.assert_close(scores.view(3, 16).mean(1), torch.tensor([1.0, 2.0, 3.0]) / mean)  # heads rank by graph
    assert torch.equal(scores.view(3, 16).argsort(1), l2.view(3, 16).argsort(1))  # dims inside a head rank by L2
    product = tpv.GraphHeadImportance(combine="product")
    product.set_head_scores(imp.raw_head_scores)
    torch.testing.assert_close(product(group), head * l2)
    mlp = DG.get_pruning_group(model.blocks[0].mlp.fc1, tp.prune_linear_out_channels, list(range(192)))
    torch.testing.assert_close(imp(mlp), tp.importance.GroupMagnitudeImportance(p=2)(mlp))  # base criterion


def loader(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return DataLoader(
        TensorDataset(torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)), batch_size=8
    )


@pytest.mark.parametrize("statistic", ["mean_map", "per_image"])
def test_calibration_is_deterministic_and_clean(statistic):
    model = make_model("vit", depth=3)
    before = snapshot(model)
    hooks = sum(len(m._forward_hooks) for m in model.modules())
    kw = dict(statistic=statistic, graph="similarity", progress=False)
    s1 = tpv.GraphHeadImportance(**kw).calibrate(model, loader()).head_scores
    s2 = tpv.GraphHeadImportance(**kw).calibrate(model, loader()).head_scores
    assert s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)
    assert sum(len(m._forward_hooks) for m in model.modules()) == hooks
    assert state_equal(before, model.state_dict()) and all(a.fused_attn for _, a in attention_modules(model))
    assert all(v.shape == (3,) for v in s1.values())


def test_modes_are_inverse_rankings():
    model = make_model("vit", depth=3)
    imp = tpv.GraphHeadImportance(mode="importance", progress=False).calibrate(model, loader())
    red = tpv.GraphHeadImportance(mode="redundancy", progress=False).calibrate(model, loader())
    for qkv, pr in imp.pagerank.items():
        torch.testing.assert_close(red.raw_head_scores[qkv], 1.0 / pr)
        torch.testing.assert_close(imp.raw_head_scores[qkv], pr)


def test_calibration_errors():
    empty = DataLoader(TensorDataset(torch.empty(0, 3, 32, 32)), batch_size=4)
    with pytest.raises(ValueError, match="no batches"):
        tpv.GraphHeadImportance(progress=False).calibrate(make_model(), empty)
    with pytest.raises(TypeError, match="not a timm VisionTransformer"):
        tpv.GraphHeadImportance(progress=False).calibrate(torch.nn.Linear(3, 3), loader())
    with pytest.raises(ValueError, match="damping"):
        tpv.GraphHeadImportance(damping=1.0)


def test_vitpruner_removes_lowest_graph_heads(x):
    model = make_model("vit", depth=2, num_heads=4)
    imp = tpv.GraphHeadImportance(combine="head")
    imp.set_head_scores({model.blocks[0].attn.qkv: [4.0, 1.0, 3.0, 2.0], model.blocks[1].attn.qkv: [0.5, 9.0, 8.0, 7.0]})
    ref = copy.deepcopy(model)
    pruner = tpv.ViTPruner(
        model,
        x,
        imp,
        head_pruning_ratio=0.25,
        global_head_pruning=True,
        pruning_ratio=0.25,
        prune_mlp=False,
        prune_head_dims=True,
    )
    pruner.step()  # 2 of 8 heads: block 1 head 0 (0.5), block 0 head 1 (1.0); then head dims on the rest
    assert pruner.heads_per_layer() == [3, 3]
    assert [len(v) for v in imp.head_scores.values()] == [3, 3]
    kept_v = model.blocks[1].attn.qkv.weight[2 * model.blocks[1].attn.attn_dim :]
    assert not any(torch.equal(kept_v[0], r) for r in ref.blocks[1].attn.qkv.weight[96 : 96 + 12])


def test_gohsp_projection_counts_and_budget(x):
    model = make_model("vit", depth=3, num_heads=4)
    imp = tpv.GraphHeadImportance(progress=False).calibrate(model, loader())
    pruner = tpv.GOHSPPruner(model, x, imp, pruning_ratio=0.3)
    plan = pruner.project(use_dual=False)
    assert plan.removed_params >= pruner.budget
    # exact accounting: params removed by the plan == params gone after step()
    n0 = tpv.utils.count_params(model)
    pruner.step()
    assert n0 - tpv.utils.count_params(model) == plan.removed_params
    heads = [len(h) for h in plan.heads]
    assert [4 - h for h in heads] == pruner.heads_per_layer()
    assert [b.mlp.fc1.out_features for b in model.blocks] == [192 - len(n) for n in plan.neurons]
    assert all(a.num_heads >= 1 for _, a in attention_modules(model))


def test_gohsp_rounds_kept_widths_down_to_tps_round_to(x):
    def widths(round_to):
        model = make_model("vit", depth=3, num_heads=4, embed_dim=64)  # head dims 16, MLP 256
        imp = tpv.GraphHeadImportance(progress=False).calibrate(model, loader())
        pruner = tpv.GOHSPPruner(model, x, imp, pruning_ratio=0.5, round_to=round_to)
        plan = pruner.project(use_dual=False)
        n0 = tpv.utils.count_params(model)
        pruner.step()
        assert n0 - tpv.utils.count_params(model) == plan.removed_params >= pruner.budget
        heads = attention_modules(model)
        return [int(a.head_dim) for _, a in heads] + [b.mlp.fc1.out_features for b in model.blocks], model

    plain, _ = widths(None)
    assert any(w % 8 for w in plain)  # the ranking alone leaves odd widths here
    rounded, model = widths(8)
    assert all(w % 8 == 0 for w in rounded), rounded
    torch.testing.assert_close(*fused_and_eager(model, x), rtol=1e-5, atol=1e-5)


def test_gohsp_step_yields_the_z_support(x):
    torch.manual_seed(0)
    model = make_model("vit", depth=2, num_heads=4)
    imp = tpv.GraphHeadImportance(progress=False).calibrate(model, loader())
    pruner = tpv.GOHSPPruner(
        model, x, imp, pruning_ratio=0.25, rho=1.0, rho_growth=1.0, balance=False, proximal=None, metric="euclidean"
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(40):  # pure ADMM through the gradient: drive W onto Z (no task loss)
        opt.zero_grad()
        pruner.regularize(model)
        opt.step()
        pruner.update_regularizer()
    assert pruner.admm_residual() < 1e-3
    z_plan = pruner.project(use_dual=True)
    masked = copy.deepcopy(model)
    with torch.no_grad():
        for p_m, p in zip(masked.parameters(), model.parameters()):
            if p in pruner.Z:
                p_m.copy_(pruner.Z[p])
    pruner.step()
    same = [
        sorted(a) == sorted(b) for a, b in zip(pruner.final_plan.heads + pruner.final_plan.neurons, z_plan.heads + z_plan.neurons)
    ]
    assert all(same)
    with torch.no_grad():
        torch.testing.assert_close(model(x), masked(x), atol=1e-3, rtol=1e-3)


def test_gohsp_errors(x):
    model = make_model("vit")
    before = snapshot(model)
    with pytest.raises(ValueError, match="calibrate"):
        tpv.GOHSPPruner(model, x, tpv.GraphHeadImportance())
    with pytest.raises(ValueError, match="pruning_ratio"):
        tpv.GOHSPPruner(model, x, None, pruning_ratio=1.2)
    with pytest.raises(ValueError, match="at most"):
        tpv.GOHSPPruner(model, x, None, pruning_ratio=0.95, structures=("heads",))
    with pytest.raises(ValueError, match="structures"):
        tpv.GOHSPPruner(model, x, None, structures=("tokens",))
    assert state_equal(before, model.state_dict())


def test_graph_scores_are_normalised_per_block_by_default():
    """The similarity chain gives the first and last blocks less PageRank; the default removes that bias."""
    model = make_model("vit", depth=4)
    imp = tpv.GraphHeadImportance(progress=False, graph="similarity", mode="importance").calibrate(model, loader())
    for qkv, scores in imp.head_scores.items():
        torch.testing.assert_close(scores.mean(), torch.tensor(1.0))
        torch.testing.assert_close(scores, (imp.pagerank[qkv] / imp.pagerank[qkv].mean()).float())
    raw = tpv.GraphHeadImportance(progress=False, normalize_per_layer=False, graph="similarity").calibrate(model, loader())
    block_mass = [float(v.sum()) for v in raw.pagerank.values()]
    assert max(block_mass[0], block_mass[-1]) < min(block_mass[1:-1])  # the boundary bias itself


def test_rho_balancing_rescales_the_scaled_dual(x):
    """When rho changes by f, U is divided by f: the unscaled dual rho * U is what the update made it."""
    torch.manual_seed(0)
    model = make_model("vit", depth=2, num_heads=4)
    imp = tpv.GraphHeadImportance(progress=False).calibrate(model, loader())
    pruner = tpv.GOHSPPruner(model, x, imp, pruning_ratio=0.25, rho=1e-3, tau=2.0, mu=10.0)
    with torch.no_grad():  # W far from Z, Z unchanged by the update: primal >> dual -> rho doubles
        for p in pruner.Z:
            p.mul_(1.0)
    before = {p: (p.detach() - pruner.Z[p] + pruner.U[p]).clone() for p in pruner.Z}
    pruner.update_regularizer()
    rec = pruner.history[-1]
    assert rec["primal"] > 10 * rec["dual"] and pruner.rho == pytest.approx(2e-3)
    for p, u in pruner.U.items():
        expected_y = 1e-3 * (p.detach() - pruner.Z[p] + (before[p] - p.detach() + pruner.Z[p]))  # rho_old * U_new(unscaled)
        torch.testing.assert_close(pruner.rho * u, expected_y, rtol=1e-5, atol=1e-8)


def test_admm_runs_on_steps_converges_and_prunes_z_support(x):
    torch.manual_seed(0)
    model = make_model("vit", depth=2, num_heads=4)
    imp = tpv.GraphHeadImportance(progress=False).calibrate(model, loader())
    pruner = tpv.GOHSPPruner(model, x, imp, pruning_ratio=0.25, rho=0.5, admm_interval=5, tol=1e-2, metric="euclidean")
    opt = torch.optim.SGD(model.parameters(), lr=0.05)  # lr * rho < 2 for every rho balancing reaches here
    for _ in range(200):
        opt.zero_grad()
        pruner.regularize(model)
        opt.step()
    assert pruner.rounds == 40 and [h["step"] for h in pruner.history[:3]] == [5, 10, 15]
    assert pruner.converged and pruner.history[-1]["primal"] < 1e-2 < pruner.history[0]["primal"]
    assert pruner.history[-1]["primal"] < pruner.history[0]["primal"]
    support = pruner._z_plan
    with torch.no_grad():  # move W so that projecting W now would choose other units
        for b in model.blocks:
            b.mlp.fc1.weight[: len(support.neurons[0]) + 5].mul_(0.0)
    pruner.step()
    assert pruner.final_plan is support  # the hard prune removes Z's support, not a re-projection of W
    with pytest.raises(ValueError, match="admm_interval"):
        tpv.GOHSPPruner(make_model("vit", depth=2, num_heads=4), x, None, pruning_ratio=0.25, admm_interval=0)


def test_proximal_admm_step_closed_form_and_convergence_under_adamw(x):
    torch.manual_seed(0)
    model = make_model("vit", depth=2, num_heads=4)
    pruner = tpv.GOHSPPruner(model, x, None, pruning_ratio=0.25, proximal=0.25, admm_interval=5, metric="euclidean")
    for p in pruner.U:
        pruner.U[p].normal_(0, 0.01)
    before = {p: p.detach().clone() for p in pruner.Z}
    pruner.regularize(model)  # no gradient needed: the pull is applied to the weights
    for p, z in pruner.Z.items():
        torch.testing.assert_close(p.detach(), (before[p] + 0.25 * (z - pruner.U[p])) / 1.25)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    y = torch.arange(x.shape[0]) % 10
    for _ in range(99):  # the loss pulls away, Adam's step size is bounded: the decoupled pull still wins
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        pruner.regularize(model)
        opt.step()
    assert pruner.history[-1]["primal"] < 0.1 * pruner.history[0]["primal"]
    with pytest.raises(ValueError, match="proximal"):
        tpv.GOHSPPruner(make_model("vit", depth=2, num_heads=4), x, None, pruning_ratio=0.25, proximal=0.0)
    default = tpv.GOHSPPruner(make_model("vit", depth=2, num_heads=4), x, None, pruning_ratio=0.25)
    assert (default.proximal, default.metric) == (0.2, "fisher") and default.config == tpv.gohsp.GOHSPConfig()


def test_fisher_metric_weights_unit_energies_by_the_running_squared_gradient(x):
    model = make_model("vit", depth=2, num_heads=4)
    euclid = tpv.GOHSPPruner(copy.deepcopy(model), x, None, pruning_ratio=0.25, metric="euclidean")
    pruner = tpv.GOHSPPruner(model, x, None, pruning_ratio=0.25, metric="fisher", proximal=None)
    assert pruner._unit_energies(False)[0]["neuron"].equal(euclid._unit_energies(False)[0]["neuron"])  # no step yet
    for value, factor in ((2.0, 4.0), (0.0, 4.0 / 2)):  # F = g^2, then the cumulative mean (g^2 + 0) / 2
        for p in pruner.Z:
            p.grad = torch.full_like(p, value)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no calibrate_fisher: the warm-up steps estimate F, silently
            pruner.regularize(model)  # gradient form: W itself does not move, the energies compare the same W
        for mine, ref in zip(pruner._unit_energies(False), euclid._unit_energies(False)):
            for kind in ("head", "dim", "neuron"):
                torch.testing.assert_close(mine[kind], factor * ref[kind])
    with pytest.raises(ValueError, match="metric"):
        tpv.GOHSPPruner(make_model("vit", depth=2, num_heads=4), x, None, pruning_ratio=0.25, metric="l1")


def test_calibrate_fisher_is_the_mean_squared_batch_gradient_and_reprojects_z(x):
    """F = mean over batches of g^2 (eval mode), Z re-projected; cumulative mean and frozen updates; errors."""
    torch.manual_seed(0)
    model = make_model("vit", depth=2, num_heads=4).train()
    images, labels = torch.randn(6, *x.shape[1:]), torch.tensor([0, 1, 2, 3, 4, 5]) % 10
    loader = DataLoader(TensorDataset(images, labels), batch_size=3)
    ref_model = copy.deepcopy(model).eval()
    ref_pruner = tpv.GOHSPPruner(ref_model, x, None, pruning_ratio=0.25)
    grads = []
    for xb, yb in loader:
        ref_model.zero_grad()
        torch.nn.functional.cross_entropy(ref_model(xb), yb).backward()
        grads.append({p: p.grad.clone() for p in ref_pruner.Z})
    before = snapshot(model)
    pruner = tpv.GOHSPPruner(model, x, None, pruning_ratio=0.25, metric="fisher")
    z_euclid = {p: z.clone() for p, z in pruner.Z.items()}
    assert pruner.calibrate_fisher(loader, progress=False) is pruner
    assert model.training and all(p.grad is None for p in model.parameters())
    assert state_equal(before, snapshot(model))  # calibration reads the model, never moves it
    for f, ref_p in zip(pruner._fisher.values(), ref_pruner.Z):
        torch.testing.assert_close(f, (grads[0][ref_p].pow(2) + grads[1][ref_p].pow(2)) / 2)
    plan = pruner.project(use_dual=False)
    assert pruner.Z[pruner._blocks[0].fc1.weight][plan.neurons[0]].abs().sum() == 0
    assert any(not z.equal(z_euclid[p]) for p, z in pruner.Z.items())  # the Fisher norm chose another support
    f0 = {p: f.clone() for p, f in pruner._fisher.items()}
    for p in pruner.Z:  # cumulative mean: (2 F + 0) / 3
        p.grad = torch.zeros_like(p)
    pruner.proximal = None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # calibrated: no warning
        pruner.regularize(model)
    for p, f in pruner._fisher.items():
        torch.testing.assert_close(f, f0[p] * 2 / 3)
    pruner.update_regularizer()
    with pytest.raises(ValueError, match="before the first dual update"):
        pruner.calibrate_fisher(loader, progress=False)
    euclid = tpv.GOHSPPruner(make_model("vit", depth=2, num_heads=4), x, None, pruning_ratio=0.25, metric="euclidean")
    with pytest.raises(ValueError, match="metric='fisher'"):
        euclid.calibrate_fisher(loader, progress=False)

    def failing():  # a loader that breaks after one batch: no half-calibrated estimate is kept
        yield images[:3], labels[:3]
        raise RuntimeError("loader broke")

    fresh = tpv.GOHSPPruner(make_model("vit", depth=2, num_heads=4), x, None, pruning_ratio=0.25)
    with pytest.raises(RuntimeError, match="loader broke"):
        fresh.calibrate_fisher(failing(), progress=False)
    assert fresh._fisher == {} and fresh._fisher_count == 0


def test_calibrate_fisher_with_model_labels_is_the_true_fisher_draw(x):
    """labels="model": targets drawn from the model's softmax with the seeded generator, batch by batch."""
    torch.manual_seed(0)
    model = make_model("vit", depth=2, num_heads=4)
    images = torch.randn(6, *x.shape[1:])
    loader = DataLoader(TensorDataset(images, torch.zeros(6, dtype=torch.long)), batch_size=3)
    ref = copy.deepcopy(model).eval()
    ref_pruner = tpv.GOHSPPruner(ref, x, None, pruning_ratio=0.25)
    gen, squares = torch.Generator().manual_seed(7), []
    for xb, _ in loader:
        ref.zero_grad()
        logits = ref(xb)
        y = torch.multinomial(logits.detach().softmax(-1), 1, generator=gen).squeeze(1)
        torch.nn.functional.cross_entropy(logits, y).backward()
        squares.append({p: p.grad.pow(2) for p in ref_pruner.Z})
    pruner = tpv.GOHSPPruner(model, x, None, pruning_ratio=0.25).calibrate_fisher(loader, progress=False, labels="model", seed=7)
    for f, p in zip(pruner._fisher.values(), ref_pruner.Z):
        torch.testing.assert_close(f, (squares[0][p] + squares[1][p]) / 2)
    empirical = tpv.GOHSPPruner(copy.deepcopy(model), x, None, pruning_ratio=0.25).calibrate_fisher(loader, progress=False)
    assert any(not a.equal(b) for a, b in zip(pruner._fisher.values(), empirical._fisher.values()))
    with pytest.raises(ValueError, match="labels"):
        pruner.calibrate_fisher(loader, progress=False, labels="soft")


def test_flow_graph_stationary_mass_closed_form():
    """Personalised PageRank from the classifier on a hand-set usage, against the linear-system solution."""
    from tp_vit_plugins.gohsp.graph import EMBED, OUT, build_flow_graph, flow_head_scores

    h00, h01, h10, h11 = ("head", 0, 0), ("head", 0, 1), ("head", 1, 0), ("head", 1, 1)
    usage = {OUT: {h10: 3.0, h11: 1.0}, h10: {h00: 1.0, h01: 1.0}, h11: {h00: 2.0, EMBED: 2.0}}
    scores = flow_head_scores(build_flow_graph(usage), [2, 2], damping=0.8)
    nodes = [OUT, h10, h11, h00, h01, EMBED]
    P = np.zeros((6, 6))  # row-stochastic walk; readers of nothing restart at OUT
    for r, row in usage.items():
        for c, w in row.items():
            P[nodes.index(r), nodes.index(c)] = w / sum(row.values())
    for i in range(6):
        if P[i].sum() == 0:
            P[i, 0] = 1.0
    e = np.eye(6)[0]
    pi = np.linalg.solve(np.eye(6) - 0.8 * P.T, 0.2 * e)  # pi = 0.2 e + 0.8 P^T pi
    pi = pi / pi.sum()
    expected = {n: pi[nodes.index(n)] for n in nodes}
    assert scores[1].tolist() == pytest.approx([expected[h10], expected[h11]], rel=1e-6)
    assert scores[0].tolist() == pytest.approx([expected[h00], expected[h01]], rel=1e-6)
    assert expected[h00] > expected[h01]  # read by both later heads


def test_flow_graph_gives_an_unwritten_head_no_mass_and_cleans_up(x):
    """A head whose output projection columns are zero writes nothing: no reader reads it, its mass is 0."""
    model = make_model("vit")
    with torch.no_grad():
        model.blocks[0].attn.proj.weight[:, 16:32] = 0  # head 1 of block 0 writes nothing
    flags = [a.fused_attn for _, a in attention_modules(model)]
    imp = tpv.GraphHeadImportance(progress=False, graph="flow").calibrate(model, [x, x])
    first = imp.head_scores[model.blocks[0].attn.qkv]
    assert first[1] == 0 and bool((first[[0, 2]] > 0).all())
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == 0
    assert [a.fused_attn for _, a in attention_modules(model)] == flags
    assert isinstance(imp.graph, nx.DiGraph) and imp.graph.has_edge("out", ("head", 1, 0))
    for family in ("siglip_map", "deit_distilled", "cait", "beit", "eva02"):  # every readout the adapter knows
        scores = tpv.GraphHeadImportance(progress=False, graph="flow").calibrate(make_model(family), [x]).head_scores
        assert all(bool(torch.isfinite(v).all()) and bool((v > 0).any()) for v in scores.values())
    with pytest.raises(ValueError, match="graph"):
        tpv.GraphHeadImportance(graph="tree")


def test_options_removed_in_0_4_are_refused_before_anything_changes(x):
    model = make_model("vit", depth=2, num_heads=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for name, old in (("normalize", "heads-block"), ("fisher_decay", None), ("budget_ramp", 0), ("target_params_ratio", 0.3)):
        with pytest.raises(TypeError, match=name):
            tpv.GOHSPPruner(model, x, None, pruning_ratio=0.2, **{name: old})
    assert all(type(b.attn).__name__ == "Attention" for b in model.blocks)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_config_object_and_keywords_give_the_same_pruner(x):
    model = make_model("vit", depth=2, num_heads=4)
    cfg = tpv.gohsp.GOHSPConfig(structures=("heads", "mlp"), metric="euclidean", rho=0.05)
    a = tpv.GOHSPPruner(copy.deepcopy(model), x, None, pruning_ratio=0.3, config=cfg)
    b = tpv.GOHSPPruner(
        copy.deepcopy(model), x, None, pruning_ratio=0.3, structures=("heads", "mlp"), metric="euclidean", rho=0.05
    )
    assert a.config == b.config == cfg and a.project(use_dual=False) == b.project(use_dual=False)
    c = tpv.GOHSPPruner(copy.deepcopy(model), x, None, pruning_ratio=0.3, config=cfg, rho=0.1)  # a keyword overrides
    assert c.config.rho == 0.1 and c.config.metric == "euclidean"
    with pytest.raises(ValueError, match="structures"):
        tpv.gohsp.GOHSPConfig(structures=("heads", "tokens"))


def test_heads_compete_within_their_block_and_neurons_across_blocks(x):
    """Scaling block 1's weights: its heads keep their share (normalised per block), its neurons win over block 0's."""
    model = make_model("vit", depth=3, num_heads=4)
    scaled = copy.deepcopy(model)
    b = scaled.blocks[1]
    with torch.no_grad():
        for p in (b.attn.qkv.weight, b.attn.qkv.bias, b.attn.proj.weight, b.mlp.fc1.weight, b.mlp.fc1.bias, b.mlp.fc2.weight):
            p.mul_(5.0)

    def plan(m, structures, ratio):
        kw = dict(pruning_ratio=ratio, structures=structures, metric="euclidean")
        return tpv.GOHSPPruner(copy.deepcopy(m), x, None, **kw).project(use_dual=False)

    assert plan(model, ("heads",), 0.05).heads == plan(scaled, ("heads",), 0.05).heads
    before, after = plan(model, ("mlp",), 0.2).neurons, plan(scaled, ("mlp",), 0.2).neurons
    assert len(after[1]) < len(before[1]) and sum(map(len, after)) == sum(map(len, before))


def test_pruning_ratio_counts_removed_parameters(x):
    model = make_model("vit", depth=2, num_heads=4)
    pruner = tpv.GOHSPPruner(copy.deepcopy(model), x, None, pruning_ratio=0.3, metric="euclidean")
    assert pruner.budget == round(0.3 * tpv.utils.count_params(model))
    n0 = tpv.utils.count_params(pruner.model)
    pruner.step()
    assert n0 - tpv.utils.count_params(pruner.model) >= pruner.budget  # removed, not kept
    with pytest.raises(TypeError, match="head_pruning_ratio"):
        tpv.GOHSPPruner(copy.deepcopy(model), x, None, head_pruning_ratio=0.5)


def test_the_flow_sketch_estimates_the_exact_usage_and_is_deterministic():
    from tp_vit_plugins.gohsp.flow import FlowUsage

    torch.manual_seed(0)
    model = make_model("vit", depth=3, num_heads=4)  # head rows 3 * 12 = 36 > 8 sketch rows
    data = [torch.randn(4, 3, 32, 32) for _ in range(2)]
    exact = FlowUsage(model, sketch=None).run(data, progress=False).usage()
    wide = FlowUsage(model, sketch=1000).run(data, progress=False).usage()  # wider than the weights: exact
    assert all(wide[r][c] == pytest.approx(exact[r][c], rel=1e-5) for r in exact for c in exact[r])
    sketched = FlowUsage(model, sketch=8).run(data, progress=False).usage()
    again = FlowUsage(model, sketch=8).run(data, progress=False).usage()
    assert sketched == again  # a fixed seed: the same estimate every time
    ratios = torch.tensor([sketched[r][c] / exact[r][c] for r in exact for c in exact[r] if exact[r][c] > 0])
    assert 0.8 < float(ratios.mean()) < 1.2 and float(ratios.std()) < 0.35  # an estimate of ||W x||, not a bias
    with pytest.raises(ValueError, match="sketch"):
        FlowUsage(model, sketch=0)


def test_the_flow_sketch_is_exact_on_its_top_directions_and_unbiased_on_the_rest():
    from tp_vit_plugins.gohsp.flow import FlowUsage

    torch.manual_seed(0)
    x = torch.randn(24, 10)
    low = torch.randn(3, 40, 4) @ torch.randn(3, 4, 24)  # [G, R, C] of rank 4 <= 8 // 2 exact rows
    state = torch.random.get_rng_state()
    P = FlowUsage._sketch(low, 8, seed=1)
    assert torch.equal(state, torch.random.get_rng_state())  # the global generator is left as it was
    assert P.shape == (3, 8, 24)
    assert torch.allclose((P @ x).norm(dim=1), (low @ x).norm(dim=1), rtol=1e-4)  # nothing left to estimate
    torch.manual_seed(5)
    assert torch.equal(FlowUsage._sketch(low, 8, seed=1), P)  # the seed, not the global state, decides
    full = torch.randn(2, 40, 24)
    mean = torch.stack([(FlowUsage._sketch(full, 8, seed=s) @ x).pow(2).sum(1) for s in range(2000)]).mean(0)
    assert torch.allclose(mean, (full @ x).pow(2).sum(1), rtol=0.05)  # E ||P x||^2 = ||W x||^2
    one = FlowUsage._sketch(full, 1, seed=0)  # one row: no exact part, a plain Gaussian row
    assert one.shape == (2, 1, 24) and torch.isfinite(one).all()
