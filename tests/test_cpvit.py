"""CP-ViT cascade: maths, timm patch, MACs and the static head importance."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_model, set_fused
from torch.utils.data import DataLoader, TensorDataset

import tp_vit_plugins as tpv
from tp_vit_plugins.core.metrics import count_macs
from tp_vit_plugins.cpvit import apply_cascade, cascade_macs, find_cascade, remove_cascade
from tp_vit_plugins.cpvit.maths import gather_tokens, head_scores, keep_schedule, range_adjusted_counts, token_scores, topk_sorted
from tp_vit_plugins.hosts.timm.blocks import cascade_attention


def deeper(family="vit", **kw):
    return make_model(family, depth=4, img_size=32, patch_size=4, **kw)  # 64 patches


@pytest.fixture
def x64():
    torch.manual_seed(7)
    return torch.randn(3, 3, 32, 32)


def test_token_scores_and_selection_on_hand_set_attention():
    # B=1, H=2, N=1 prefix + 3 patches
    A = torch.zeros(1, 2, 4, 4)
    A[0, 0, :, 1] = torch.tensor([0.1, 0.5, 0.2, 0.3])  # head 0, patch 0: column max 0.5
    A[0, 0, :, 2] = torch.tensor([0.9, 0.1, 0.0, 0.0])  # patch 1: 0.9
    A[0, 1, :, 3] = torch.tensor([0.2, 0.2, 0.2, 0.2])  # head 1, patch 2: 0.2
    A[0, 1, :, 1] = torch.tensor([0.3, 0.0, 0.0, 0.0])  # patch 0 gets +0.3 from head 1
    s = token_scores(A, num_prefix=1)
    torch.testing.assert_close(s, torch.tensor([[0.8, 0.9, 0.2]]))
    torch.testing.assert_close(head_scores(A, 1), torch.tensor([[0.5 + 0.9 + 0.0, 0.3 + 0.0 + 0.2]]))
    keep = topk_sorted(s, 2)
    assert keep.tolist() == [[0, 1]]  # the lowest (patch 2) is dropped, order kept
    tokens = torch.arange(4.0).view(1, 4, 1)
    assert gather_tokens(tokens, keep, 1).flatten().tolist() == [0.0, 1.0, 2.0]  # prefix survives


def test_schedule_closed_form():
    assert keep_schedule(64, 4, 0.5, 1) == [64, 64, 48, 32]
    assert keep_schedule(49, 6, 0.5, 1) == [49, 49, 43, 37, 31, 25]
    # gamma = 0.5: n = round(64 * (1 - 0.5 * t ** 0.5)), t = 1/2, 1
    assert keep_schedule(64, 4, 0.5, 1, power=0.5) == [64, 64, round(64 * (1 - 0.5 * 0.5**0.5)), 32]
    schedule = [48, 48, 40, 32, 32]
    assert range_adjusted_counts(schedule, {1: 0.5, 2: 0.5}, 0.5) == schedule  # equal ranges: the schedule
    local_first = range_adjusted_counts(schedule, {1: 0.9, 2: 0.1}, 0.5)
    assert local_first[2] > 40 and local_first[3] < local_first[2] * 32 / 40  # local point prunes less, global more
    assert range_adjusted_counts(schedule, {1: 0.9, 2: 0.1}, 0.0) == schedule
    with pytest.raises(ValueError, match="keep_ratio"):
        keep_schedule(64, 4, 0.0, 1)
    with pytest.raises(ValueError, match="start_block"):
        keep_schedule(64, 4, 0.5, 3)
    with pytest.raises(ValueError, match="power"):
        keep_schedule(64, 4, 0.5, 1, power=0.0)


def test_keep_one_and_apply_remove_are_identity(family, x):
    model = make_model(family)
    with torch.no_grad():
        ref = model(x)
        apply_cascade(model, keep_ratio=1.0, start_block=0)
        assert torch.equal(model(x), ref)
        remove_cascade(model)
        head_keep = 1.0 if family == "cait" else 0.5  # CaiT's talking heads mix heads: no head skipping
        apply_cascade(model, keep_ratio=0.5, head_keep_ratio=head_keep, start_block=0)
        assert not torch.equal(model(x), ref)
        remove_cascade(model)
        assert torch.equal(model(x), ref)
    assert find_cascade(model) is None
    assert all("forward" not in b.attn.__dict__ and "forward" not in b.__dict__ for b in model.blocks)
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == 0


@pytest.mark.parametrize("family_", ["vit", "deit_distilled", "reg_tokens", "layerscale", "avgpool_no_cls"])
def test_counts_follow_schedule_and_prefix_survives(family_, x64):
    """Tokens leave on the schedule; the prefix tokens are never dropped (they match the masked run, where nothing moves)."""
    model = deeper(family_)
    prefix = model.num_prefix_tokens

    def last_block_input(**options):
        c = apply_cascade(model, keep_ratio=0.5, start_block=1, schedule_steps=None, beta=0.0, trim_last=False, **options)
        seen = []
        h = model.blocks[-1].register_forward_pre_hook(lambda m, a: seen.append(a[0].detach()))
        try:
            with torch.no_grad():
                model(x64)
        finally:
            h.remove()
            counts = list(c.state.counts)
            c.remove()
        return seen[0], counts, c.schedule

    dropped, counts, schedule = last_block_input(fold="drop")
    masked, _, _ = last_block_input(mode="mask")
    assert counts == [64, 64, 48, 32] == schedule
    assert dropped.shape == (3, prefix + 32, 48) and masked.shape == (3, prefix + 64, 48)
    # masking a patch as a key equals dropping it, so the prefix rows agree only if they were kept in place
    torch.testing.assert_close(dropped[:, :prefix], masked[:, :prefix], rtol=1e-4, atol=1e-5)
    if prefix:  # the check can fail: rows shifted by one token do not match
        assert not torch.allclose(dropped[:, 1 : prefix + 1], masked[:, :prefix], rtol=1e-4, atol=1e-5)


def test_beta_is_calibrated_into_fixed_counts_that_land_on_the_final_count(x64):
    model = deeper()
    c = apply_cascade(model, keep_ratio=0.5, start_block=1, schedule_steps=None, fold="drop", beta=1.0, calib=[x64, x64[:1]])
    assert c.counts[-1] == 32 and c.counts[2] >= 48 and c.counts[:2] == [64, 64]
    with torch.no_grad():
        model(x64)
    assert c.state.counts == c.counts and not c.state.localities  # no per-batch statistics at run time
    remove_cascade(model)
    with pytest.raises(ValueError, match="calib="):
        apply_cascade(model, keep_ratio=0.5, start_block=1, beta=0.5)
    assert find_cascade(model) is None


@pytest.mark.parametrize("family_", ["vit", "beit", "eva02"])
def test_mask_mode_equals_drop_mode_for_token_pooling(family_, x64):
    """Dropping == masking as keys; for BEiT / EVA the relative bias and rope follow each kept token's grid position."""
    model = deeper(family_, **({"global_pool": "token"} if family_ in ("beit", "eva02") else {}))
    with torch.no_grad():
        apply_cascade(model, keep_ratio=0.5, start_block=1, schedule_steps=None, fold="drop", beta=0.0, mode="drop")
        dropped = model(x64)
        remove_cascade(model)
        apply_cascade(model, keep_ratio=0.5, start_block=1, schedule_steps=None, fold="drop", beta=0.0, mode="mask")
        masked = model(x64)
        remove_cascade(model)
    torch.testing.assert_close(dropped, masked, atol=1e-5, rtol=1e-5)


def test_talking_heads_masked_keys_equal_dropped_keys():
    """CaiT: a masked key gets no weight, not even from the mixer's bias; kept rows equal attention over the kept tokens."""
    model = make_model("cait")
    attn = model.blocks[0].attn
    torch.manual_seed(5)
    x = torch.randn(2, 16, 48)
    key_mask = torch.zeros(2, 16, dtype=torch.bool)
    key_mask[:, ::3] = True  # the same 6 keys masked in both images
    kept = (~key_mask[0]).nonzero()[:, 0]
    probs = []
    with torch.no_grad():
        masked = cascade_attention(attn, x, 0, key_mask=key_mask, observe=probs.append)
        dropped = cascade_attention(attn, x[:, kept], 0)
    torch.testing.assert_close(masked[:, kept], dropped, atol=1e-5, rtol=1e-5)
    assert bool((probs[0][..., key_mask[0]] == 0).all())


def test_head_skipping_equals_zeroing_those_heads(x64):
    model = deeper(num_heads=4)
    block = model.blocks[2]
    apply_cascade(model, keep_ratio=1.0, head_keep_ratio=0.5, start_block=1, head_start_block=2)
    inputs = {}
    h = block.attn.register_forward_pre_hook(lambda m, a: inputs.setdefault("x", a[0].detach()))
    with torch.no_grad():
        out = block.attn(block.norm1(model.blocks[1](model.blocks[0](model._pos_embed(model.patch_embed(x64))))))
    h.remove()
    remove_cascade(model)
    a, xin = block.attn, block.norm1(model.blocks[1](model.blocks[0](model._pos_embed(model.patch_embed(x64)))))
    with torch.no_grad():
        B, N, _ = xin.shape
        q, k, v = a.qkv(xin).reshape(B, N, 3, 4, 12).permute(2, 0, 3, 1, 4)
        probs = ((q * a.scale) @ k.transpose(-2, -1)).softmax(-1)
        keep = topk_sorted(head_scores(probs, 1), 2)
        heads_out = probs @ v  # [B, H, N, d]
        mask = torch.zeros(B, 4, dtype=torch.bool).scatter_(1, keep, True)
        heads_out = heads_out * mask[:, :, None, None]
        ref = a.proj(heads_out.transpose(1, 2).reshape(B, N, 48))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_works_on_a_tp_pruned_model_and_fused_equals_eager(x64):
    model = deeper(num_heads=4)
    tpv.ViTPruner(model, x64[:1], pruning_ratio=0.25, head_pruning_ratio=0.25, prune_head_dims=True).step()
    assert [b.attn.num_heads for b in model.blocks] == [3] * 4
    with torch.no_grad():
        ref = model(x64)
        apply_cascade(model, keep_ratio=1.0, start_block=0)
        assert torch.equal(model(x64), ref)
        remove_cascade(model)
        c = apply_cascade(model, keep_ratio=0.5, start_block=1, beta=0.0)
        # the last block scores nothing: it runs timm's own forward, so the fused flag matters there
        assert 3 not in c.score_blocks and not c.head_blocks
        set_fused(model, True)
        fused = model(x64)
        set_fused(model, False)
        eager = model(x64)
    assert c.last.counts[-1] < 64  # tokens were dropped before the delegating block
    torch.testing.assert_close(fused, eager, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fused", [True, False])
def test_cascade_attention_equals_timm_forward(family, fused):
    """The cascade's copy of timm's eager attention is locked to ``Attention.forward`` on every family."""
    model = make_model(family)
    set_fused(model, fused)
    torch.manual_seed(3)
    tokens = torch.randn(2, 17, 48)
    with torch.no_grad():
        for blk in model.blocks:
            torch.testing.assert_close(cascade_attention(blk.attn, tokens), blk.attn(tokens), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fused", [True, False])
def test_cascade_attention_equals_timm_forward_after_head_dim_pruning(fused, x):
    model = make_model("qk_norm")
    tpv.ViTPruner(model, x[:1], pruning_ratio=0.25, prune_head_dims=True, prune_mlp=False).step()
    set_fused(model, fused)
    tokens = torch.randn(2, 17, 48)
    with torch.no_grad():
        for blk in model.blocks:
            torch.testing.assert_close(cascade_attention(blk.attn, tokens), blk.attn(tokens), atol=1e-5, rtol=1e-5)


def test_cascade_that_keeps_everything_equals_the_model_on_every_family(family, x):
    model = make_model(family)
    with torch.no_grad():
        ref = model(x)
        # every head kept (round(3 * 0.999) = 3) but head skipping on: every block runs the copied path
        c = apply_cascade(model, keep_ratio=1.0, head_keep_ratio=0.999, start_block=0)
        out = model(x)
    assert c.head_blocks == {0, 1} and c.state.heads_kept == [3, 3]
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_cascade_refuses_attention_masks():
    model = deeper()
    apply_cascade(model, keep_ratio=0.5, start_block=0)
    with pytest.raises(ValueError, match="attn_mask"):
        model.blocks[0].attn(torch.randn(1, 65, 48), attn_mask=torch.zeros(65, 65))
    remove_cascade(model)
    model.blocks[0].attn(torch.randn(1, 65, 48), attn_mask=torch.zeros(65, 65))  # timm's own forward takes it again


@pytest.mark.parametrize("family_", ["vit", "deit_distilled", "reg_tokens"])
@pytest.mark.parametrize("head_keep", [1.0, 0.5])
def test_macs_match_flop_counter(family_, head_keep, x64):
    model = deeper(family_, num_heads=4)
    c = apply_cascade(model, keep_ratio=0.5, head_keep_ratio=head_keep, start_block=1, beta=0.5, calib=[x64])
    measured = count_macs(model, x64)
    expected = cascade_macs(
        model, (3, 32, 32), keep_ratio=0.5, head_keep_ratio=head_keep, start_block=1, counts=c.state.counts, batch_size=3
    )
    assert measured == expected
    remove_cascade(model)
    assert count_macs(model, x64) == cascade_macs(model, (3, 32, 32), keep_ratio=1.0, start_block=1, batch_size=3)


@pytest.mark.parametrize("score", ["cls", "random"])
def test_baseline_scorers_share_the_schedule(score, x64):
    model = deeper()
    c = apply_cascade(model, keep_ratio=0.5, start_block=1, schedule_steps=None, fold="drop", beta=0.0, score=score)
    with torch.no_grad():
        model(x64)
    assert c.state.counts == [64, 64, 48, 32]
    remove_cascade(model)


def test_cascade_errors(x):
    model = make_model()
    with pytest.raises(TypeError, match="VisionTransformer"):
        apply_cascade(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="keep_ratio"):
        apply_cascade(model, keep_ratio=1.5, start_block=0)
    with pytest.raises(ValueError, match="mode"):
        apply_cascade(model, mode="zero", start_block=0)
    with pytest.raises(ValueError, match="score"):
        apply_cascade(model, score="norm", start_block=0)
    apply_cascade(model, start_block=0)
    with pytest.raises(TypeError, match="already applied"):
        apply_cascade(model, start_block=0)
    remove_cascade(model)
    with pytest.raises(ValueError, match="start_block"):
        apply_cascade(model, start_block=1)  # 2 blocks: nothing after block 1 to prune
    assert find_cascade(model) is None


def test_cumulative_head_importance_matches_statistic(x64):
    model = deeper(num_heads=4)
    data = DataLoader(TensorDataset(x64), batch_size=2)
    imp = tpv.CumulativeHeadImportance(progress=False).calibrate(model, data)
    with tpv.utils.attention_maps(model) as maps:
        model(x64)
    for blk, m in zip(model.blocks, maps):
        torch.testing.assert_close(imp.raw_head_scores[blk.attn.qkv], head_scores(m.double(), 1).mean(0))
    pruned = copy.deepcopy(model)
    tpv.ViTPruner(pruned, x64[:1], imp, head_pruning_ratio=0.5).step()
    assert [b.attn.num_heads for b in pruned.blocks] == [2] * 4


@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(score="cls"),
        dict(score="random"),
        dict(mode="mask"),
        dict(head_keep_ratio=0.5),
        dict(fold="merge", head_keep_ratio=0.5),
        dict(prune_at="mlp"),
        dict(prune_at="block"),
        dict(score_at="prune", schedule_steps=2),
        dict(trim_last=False),
        dict(beta=0.8, calib="x64"),
        dict(schedule_steps=None, head_keep_ratio=0.75, beta=0.5, calib="x64"),
    ],
)
def test_an_images_output_does_not_depend_on_its_batch(options, x64):
    """Per-image determinism for every option: image i alone == image i inside the batch."""
    _check_per_image(deeper(num_heads=4), options, x64)


@pytest.mark.parametrize("family_", ["beit", "eva02", "cait"])
@pytest.mark.parametrize(
    "options", [dict(), dict(fold="drop", head_keep_ratio=0.5), dict(mode="mask"), dict(prune_at="mlp", fold="merge")]
)
def test_other_families_are_deterministic_per_image(family_, options, x64):
    if family_ == "cait" and options.get("head_keep_ratio"):
        with pytest.raises(ValueError, match="talking-heads"):
            apply_cascade(deeper(family_, num_heads=4), keep_ratio=0.5, start_block=1, **options)
        return
    _check_per_image(deeper(family_, num_heads=4), options, x64)


def _check_per_image(model, options, x64):
    kwargs = {**options, "calib": [x64] if options.get("calib") else None}
    c = apply_cascade(model, keep_ratio=0.5, start_block=1, **kwargs)
    batch = torch.cat([x64, torch.randn(5, 3, 32, 32) * 3])  # other images, other statistics
    with torch.no_grad():
        together = model(batch)
        counts_together = list(c.state.counts)
        for i in range(len(x64)):
            alone = model(batch[i : i + 1])
            assert c.state.counts == counts_together
            torch.testing.assert_close(alone[0], together[i], rtol=1e-5, atol=1e-5)
    remove_cascade(model)


def test_merge_into_kept_closed_form():
    from tp_vit_plugins.cpvit.maths import merge_into_kept

    x = torch.tensor([[[9.0, 9.0], [1.0, 0.0], [0.0, 1.0], [2.0, 0.1], [0.1, 3.0]]])  # 1 prefix + 4 patches
    sizes = torch.tensor([[1.0, 1.0, 2.0, 1.0]])
    out, new_sizes = merge_into_kept(x, sizes, torch.tensor([[0, 1]]), num_prefix=1)
    # patch 2 (size 2) joins patch 0 (most similar: x-axis), patch 3 joins patch 1 (y-axis)
    expected = torch.tensor([[[9.0, 9.0], [(1 + 2 * 2.0) / 3, 0.2 / 3], [0.1 / 2, 4.0 / 2]]])
    torch.testing.assert_close(out, expected)
    assert new_sizes.tolist() == [[3.0, 2.0]]


@pytest.mark.parametrize("given_sizes", [True, False])
@pytest.mark.parametrize("num_prefix", [0, 2])
def test_merge_into_kept_matches_a_per_image_reference(given_sizes, num_prefix):
    """The running-mean, flattened implementation equals the definition, image by image."""
    from tp_vit_plugins.cpvit.maths import merge_into_kept

    g = torch.Generator().manual_seed(0)
    B, P, C, n = 3, 9, 5, 4
    x = torch.randn(B, num_prefix + P, C, generator=g, dtype=torch.float64)
    sizes = torch.rand(B, P, generator=g, dtype=torch.float64) + 0.5 if given_sizes else None
    keep = torch.stack([torch.randperm(P, generator=g)[:n].sort().values for _ in range(B)])
    out, new_sizes = merge_into_kept(x, sizes, keep, num_prefix)
    for b in range(B):
        s = sizes[b] if given_sizes else torch.ones(P, dtype=torch.float64)
        patches, kept = x[b, num_prefix:], keep[b].tolist()
        total = [patches[k] * s[k] for k in kept]
        size = [s[k].clone() for k in kept]
        for d in sorted(set(range(P)) - set(kept)):
            cos = torch.stack([torch.nn.functional.cosine_similarity(patches[d], patches[k], dim=0) for k in kept])
            j = int(cos.argmax())
            total[j], size[j] = total[j] + patches[d] * s[d], size[j] + s[d]
        expected = torch.cat([x[b, :num_prefix], torch.stack([t / z for t, z in zip(total, size)])])
        torch.testing.assert_close(out[b], expected)
        torch.testing.assert_close(new_sizes[b], torch.stack(size).to(new_sizes.dtype))
    assert torch.equal(x, x.clone())  # the input is not written


def test_random_scorer_reads_no_attention(x64):
    """The random baseline needs no attention probabilities: its blocks keep the fused path."""
    model = deeper()
    c = apply_cascade(model, keep_ratio=0.5, start_block=1, fold="drop", score="random")
    assert c.score_blocks == set()
    calls = []
    original = torch.nn.functional.scaled_dot_product_attention
    with torch.no_grad(), pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.nn.functional, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or original(*a, **k))
        model(x64)
    assert len(calls) == len(model.blocks)  # every block ran timm's fused attention
    kept = c._random_table[: c.num_patches].topk(c.state.counts[-1]).indices.sort().values
    assert torch.equal(c.state.positions[0], kept)  # the top of the fixed table, in grid order
    remove_cascade(model)


def test_merge_fold_keeps_counts_conserves_patches_and_is_identity_without_drops(x64):
    model = deeper()
    with torch.no_grad():
        ref = model(x64)
        c = apply_cascade(model, keep_ratio=1.0, start_block=1, fold="merge")
        torch.testing.assert_close(model(x64), ref, rtol=1e-5, atol=1e-5)  # nothing pruned: nothing merged
        remove_cascade(model)
        c = apply_cascade(model, keep_ratio=0.5, start_block=1, fold="merge", schedule_steps=None)
        model(x64)
    assert c.state.counts == [64, 64, 48, 32] and c.state.sizes.shape == (3, 32)
    assert c.state.sizes.sum(1).tolist() == [64.0, 64.0, 64.0]  # every patch is accounted for
    remove_cascade(model)
    with pytest.raises(ValueError, match="fold"):
        apply_cascade(model, keep_ratio=0.5, start_block=1, fold="merge", mode="mask")


def test_stepped_schedule_closed_form_and_exact_macs(x64):
    assert keep_schedule(64, 6, 0.5, 1, steps=3) == [64, 64, 53, 43, 32, 32]  # stages of (64 - 32) / 3 tokens
    assert keep_schedule(64, 12, 0.4, 2, steps=3) == [64, 64, 64, 51, 51, 51, 38, 38, 38, 26, 26, 26]
    with pytest.raises(ValueError, match="steps"):
        keep_schedule(64, 6, 0.5, 1, steps=0)
    model = deeper()
    c = apply_cascade(model, keep_ratio=0.5, start_block=1, schedule_steps=3)
    with torch.no_grad():
        model(x64)
    assert c.state.counts == [64, 64, 43, 32] == keep_schedule(64, 4, 0.5, 1, steps=3)
    expected = cascade_macs(model, (3, 32, 32), keep_ratio=0.5, start_block=1, schedule_steps=3, batch_size=3)
    assert count_macs(model, x64) == expected
    remove_cascade(model)


@pytest.mark.parametrize("family_", ["vit", "avgpool_no_cls"])  # block forwards; block forwards and the pooled head
def test_a_deepcopy_of_a_cascaded_model_is_its_own_cascade(family_, x64):
    """copy.deepcopy copies the cascade with the model; removing either leaves the other alone."""
    import copy

    model = deeper(family_)
    with torch.no_grad():
        ref = model(x64)
        apply_cascade(model, keep_ratio=0.5, start_block=1)
        cascaded = model(x64)
        twin = copy.deepcopy(model)
        torch.testing.assert_close(twin(x64), cascaded, atol=0, rtol=0)
        assert find_cascade(twin) is not find_cascade(model) and find_cascade(twin).model is twin
        remove_cascade(twin)
        assert torch.equal(twin(x64), ref) and torch.equal(model(x64), cascaded)
        remove_cascade(model)
        assert torch.equal(model(x64), ref)
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in (*model.modules(), *twin.modules())) == 0
    for m in (model, twin):  # no replaced forward left anywhere (blocks, attention, pooled head)
        assert not any("forward" in vars(mod) or "forward_head" in vars(mod) for mod in m.modules())


def test_block_halves_compose_to_the_block_forward(family, x):
    """Every block type's two residual halves, chained, are exactly the block's own forward (kwargs passed on)."""
    from tp_vit_plugins.hosts.timm.blocks import block_halves, token_blocks

    model = make_model(family)
    with torch.no_grad():
        ref = model(x)
        for b in token_blocks(model):
            halves = block_halves(b)
            b.forward = lambda t, _b=b, _h=halves, **kw: _h.mlp(_b, _h.attn(_b, t, **kw))
        assert torch.equal(model(x), ref)


@pytest.mark.parametrize("family_", ["vit", "deit_distilled", "layerscale", "beit", "eva02", "cait"])
def test_dropping_before_the_mlp_equals_dropping_after_it_with_fewer_macs(family_, x64):
    """The MLP works per token: with dropped tokens the outputs are the same, only the dropped tokens' MLP is saved."""
    model = deeper(family_)
    out, macs, counts = {}, {}, {}
    for site in ("block", "mlp"):
        c = apply_cascade(model, keep_ratio=0.5, start_block=1, schedule_steps=None, fold="drop", prune_at=site, trim_last=False)
        with torch.no_grad():
            out[site] = model(x64)
        counts[site] = list(c.state.counts)
        macs[site] = count_macs(model, x64[:1])
        remove_cascade(model)
    torch.testing.assert_close(out["mlp"], out["block"], atol=1e-5, rtol=1e-5)
    assert counts["mlp"] == counts["block"] == [64, 64, 48, 32]
    b = model.blocks[0]
    mlp_macs = sum(m.in_features * m.out_features for m in b.mlp.modules() if isinstance(m, torch.nn.Linear))
    assert macs["block"] - macs["mlp"] == mlp_macs * (16 + 16)  # block 1's MLP lost 16 tokens, block 2's 16 more


@pytest.mark.parametrize("family_", ["vit", "deit_distilled", "reg_tokens"])
@pytest.mark.parametrize("fold", ["drop", "merge"])
def test_macs_of_pruning_before_the_mlp_match_flop_counter(family_, fold, x64):
    model = deeper(family_, num_heads=4)
    apply_cascade(model, keep_ratio=0.4, start_block=0, fold=fold, prune_at="mlp")
    expected = cascade_macs(model, (3, 32, 32), keep_ratio=0.4, start_block=0, fold=fold, prune_at="mlp", batch_size=3)
    assert count_macs(model, x64) == expected
    remove_cascade(model)


def test_merging_before_the_mlp_merges_the_stream_after_attention(x64):
    """prune_at="mlp" with merging: the block's MLP runs on the merged tokens (closed form on block 0)."""
    from tp_vit_plugins.cpvit.maths import merge_into_kept
    from tp_vit_plugins.hosts.timm.blocks import block_halves

    model = deeper()
    c = apply_cascade(model, keep_ratio=0.5, start_block=0, schedule_steps=1, fold="merge", prune_at="mlp")
    seen = []
    h = model.blocks[1].register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    with torch.no_grad():
        model(x64)
        remove_cascade(model)
        b, halves = model.blocks[0], block_halves(model.blocks[0])
        probs = []
        xin = model.norm_pre(model._pos_embed(model.patch_embed(x64)))
        after_attn = halves.attn(b, xin)
        cascade_attention(b.attn, b.norm1(xin), observe=probs.append)
        scores = token_scores(probs[0], 1)
        order = scores.argsort(dim=1, descending=True, stable=True)
        merged, _ = merge_into_kept(after_attn, torch.ones(3, 64), order[:, :32].sort(dim=1).values, 1, order[:, 32:])
        expected = halves.mlp(b, merged)
    h.remove()
    assert c.schedule == [64, 32, 32, 32]
    torch.testing.assert_close(seen[0], expected, atol=1e-5, rtol=1e-5)


def test_prune_at_errors_leave_the_model_unchanged(x):
    from tp_vit_plugins.demo.peers import apply_tome, remove_peer
    from tp_vit_plugins.hosts.timm.support import UnsupportedModelError

    model = make_model()
    with torch.no_grad():
        ref = model(x)
    with pytest.raises(ValueError, match="prune_at"):
        apply_cascade(model, prune_at="attn", start_block=0)

    class OwnBlock(type(model.blocks[0])):  # a subclass may change its forward: its split is not known
        pass

    odd = copy.deepcopy(model)
    odd.blocks[1].__class__ = OwnBlock
    with pytest.raises(UnsupportedModelError, match="OwnBlock.*prune_at='block'"):
        apply_cascade(odd, start_block=0, prune_at="mlp")
    assert find_cascade(odd) is None and not any("forward" in vars(b) for b in (*odd.blocks, *(b.attn for b in odd.blocks)))
    apply_cascade(odd, start_block=0, prune_at="block")  # after the whole block: any block type
    remove_cascade(odd)
    peer = apply_tome(model, 2)
    with pytest.raises(TypeError, match="already replaced"):
        apply_cascade(model, start_block=0)
    remove_peer(peer)
    with torch.no_grad():
        assert torch.equal(model(x), ref)
    assert all("forward" not in vars(b) for b in model.blocks)


@pytest.mark.parametrize("family_", ["avgpool_no_cls", "beit", "eva02"])
def test_an_average_pool_weights_merged_tokens_by_their_sizes(family_, x64):
    """Merged tokens: the head's mean counts every original patch once (closed form on the final tokens)."""
    model = deeper(family_)
    c = apply_cascade(model, keep_ratio=0.5, start_block=0, fold="merge")
    feats = []
    with torch.no_grad():
        h = model.norm.register_forward_hook(lambda m, a, out: feats.append(out))
        pre = model.forward_head(model.forward_features(x64), pre_logits=True)
        h.remove()
        sizes = c.state.sizes  # [B, P_cur]
        p = c.num_prefix
        mean = (feats[0][:, p:] * sizes[..., None]).sum(1) / sizes.sum(1, keepdim=True)
        expected = model.fc_norm(mean)
        assert sizes.sum(1).tolist() == [64.0] * 3 and sizes.max() > 1  # tokens were merged
        torch.testing.assert_close(pre, expected, atol=1e-5, rtol=1e-5)
        remove_cascade(model)
        assert "forward_head" not in vars(model)
        unweighted = model.fc_norm(feats[0][:, p:].mean(1))
        assert not torch.allclose(pre, unweighted, atol=1e-3)  # the weighting changed something


def test_score_at_prune_sums_the_pruning_blocks_only(x64):
    model = make_model("vit", depth=6, img_size=32, patch_size=4)
    with torch.no_grad():
        ramp = {}
        for site in ("all", "prune"):  # the ramp prunes after every block: the same blocks score
            c = apply_cascade(model, keep_ratio=0.5, schedule_steps=None, score_at=site)
            ramp[site] = (model(x64), set(c.score_blocks))
            remove_cascade(model)
        assert ramp["all"][1] == ramp["prune"][1] == {0, 1, 2, 3, 4}
        torch.testing.assert_close(ramp["all"][0], ramp["prune"][0], atol=0, rtol=0)
        c = apply_cascade(model, keep_ratio=0.5, schedule_steps=2, score_at="prune")
        seen = []
        accumulate = c._accumulate
        c._accumulate = lambda i, stat: (seen.append(i), accumulate(i, stat))
        model(x64)
    assert c.schedule == [64, 48, 48, 32, 32, 32] and c.score_blocks == {0, 2} and seen == [0, 2]
    remove_cascade(model)
    with pytest.raises(ValueError, match="score_at"):
        apply_cascade(model, score_at="every")
    assert find_cascade(model) is None


@pytest.mark.parametrize("family_", ["vit", "deit_distilled", "reg_tokens", "avgpool_no_cls"])
def test_trim_last_runs_the_last_mlp_on_the_read_tokens_only(family_, x64):
    """A class-token head never reads the patch tokens' last MLP: same logits, that MLP's MACs saved."""
    from tp_vit_plugins.hosts.timm.blocks import reads_prefix_only

    model = deeper(family_)
    out, macs, feats = {}, {}, {}
    for trim in (False, True):
        c = apply_cascade(model, keep_ratio=0.5, start_block=1, schedule_steps=None, trim_last=trim)
        with torch.no_grad():
            out[trim], feats[trim] = model(x64), model.forward_features(x64)
        macs[trim] = count_macs(model, x64[:1])
        assert macs[trim] == cascade_macs(model, (3, 32, 32), keep_ratio=0.5, start_block=1, schedule_steps=None, trim_last=trim)
        remove_cascade(model)
    torch.testing.assert_close(out[True], out[False], atol=1e-5, rtol=1e-5)
    prefix = model.num_prefix_tokens
    if reads_prefix_only(model):
        assert c.trim_last and feats[True].shape[1] == prefix and feats[False].shape[1] == prefix + 32
        mlp_macs = sum(m.in_features * m.out_features for m in model.blocks[-1].mlp.modules() if isinstance(m, torch.nn.Linear))
        assert macs[False] - macs[True] == 32 * mlp_macs  # the 32 patch tokens left in the last block
    else:  # an average pool reads every token: nothing to trim
        assert not c.trim_last and macs[True] == macs[False] and torch.equal(out[True], out[False])
    with torch.no_grad():
        ref = model(x64)
        apply_cascade(model, keep_ratio=1.0, trim_last=True)  # prunes nothing: trims nothing, bit-identical
        assert torch.equal(model(x64), ref)


@pytest.mark.parametrize("options", [dict(fold="drop", prune_at="block"), dict(), dict(head_keep_ratio=0.5)])
def test_cascade_macs_are_exact_on_every_family(family, options, x64):
    """Analytic MACs == FlopCounterMode's, whatever the MLP (SwiGLU), head mixers, class attention or attention pool."""
    if family == "cait" and "head_keep_ratio" in options:
        return  # talking heads: no head skipping (refused, tested above)
    model = deeper(family)
    assert count_macs(model, x64[:1]) == cascade_macs(model, (3, 32, 32), keep_ratio=1.0)
    apply_cascade(model, keep_ratio=0.4, **options)
    assert count_macs(model, x64[:1]) == cascade_macs(model, (3, 32, 32), keep_ratio=0.4, **options)
    remove_cascade(model)


@pytest.mark.parametrize("family_", ["vit", "beit", "eva02"])
@pytest.mark.parametrize("score", ["cumulative", "cls"])
def test_scoring_attention_in_batch_chunks_equals_one_piece(family_, score, x64, monkeypatch):
    """The cache-sized chunks of the scoring attention give the same tokens, scores and logits."""
    import tp_vit_plugins.hosts.timm.blocks as patch

    model = deeper(family_, num_heads=4)
    c = apply_cascade(model, keep_ratio=0.5, start_block=1, score=score)  # merged tokens: a logit bias too
    chunks = []
    original = patch._attend_in_chunks

    def spy(a, q, *args):
        chunks.append(q.shape[0])
        return original(a, q, *args)

    monkeypatch.setattr(patch, "_attend_in_chunks", spy)
    with torch.no_grad():
        whole = model(x64)
        scores, positions = c.state.scores.clone(), c.state.positions
        monkeypatch.setattr(patch, "CHUNK_BYTES", 1)  # one image per chunk
        chunked = model(x64)
    assert chunks and len(set(chunks)) == 1  # the scoring blocks took the chunked path
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(c.state.scores, scores, rtol=1e-5, atol=1e-6)
    if positions is not None:
        assert torch.equal(c.state.positions, positions)
    remove_cascade(model)


def test_reduce_probs_observes_the_statistic_of_the_probabilities():
    attn = make_model(num_heads=4).blocks[0].attn
    x = torch.randn(3, 17, attn.qkv.in_features)
    probs, stats = [], []
    with torch.no_grad():
        plain = cascade_attention(attn, x, 1, observe=probs.append)
        reduced = cascade_attention(attn, x, 1, observe=stats.append, reduce_probs=lambda p: token_scores(p, 1))
        mask = torch.zeros(3, 16, dtype=torch.bool)
        masked = cascade_attention(attn, x, 1, key_mask=mask, observe=stats.append, reduce_probs=lambda p: p.sum(-1))
    torch.testing.assert_close(reduced, plain)
    torch.testing.assert_close(masked, plain)
    torch.testing.assert_close(stats[0], token_scores(probs[0], 1))
    torch.testing.assert_close(stats[1], torch.ones(3, 4, 17))  # the unchunked path observes the statistic too


@pytest.mark.parametrize("options", [dict(), dict(fold="drop"), dict(score="cls")])
def test_cascade_backpropagates(options, x64):
    """Fine-tuning through the cascade: gradients reach every parameter, finite."""
    model = deeper()
    model.train()
    c = apply_cascade(model, keep_ratio=0.5, start_block=1, **options)
    loss = model(x64).logsumexp(-1).sum()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.blocks[-1].mlp.fc1.weight.grad.abs().sum() > 0
    assert c.state.counts[-1] == 32
    remove_cascade(model)


def test_merge_into_kept_gradient_is_exact():
    """The in-place running mean has the gradient of the size-weighted average (float64 gradcheck)."""
    from tp_vit_plugins.cpvit.maths import merge_into_kept

    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 1 + 6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    sizes = torch.rand(2, 6, generator=g, dtype=torch.float64) + 0.5
    keep = torch.tensor([[0, 2, 5], [1, 3, 4]])
    assert torch.autograd.gradcheck(lambda t: merge_into_kept(t, sizes, keep, 1)[0], (x,))


def test_one_config_object_serves_apply_cascade_cascade_macs_and_fit_keep_ratio():
    from tp_vit_plugins.cpvit import CascadeConfig, fit_keep_ratio

    model = make_model(num_heads=4)
    x = torch.randn(2, 3, 32, 32)
    cfg = CascadeConfig(keep_ratio=0.5, start_block=0, schedule_steps=None, fold="drop")
    with torch.no_grad():
        c = apply_cascade(model, cfg)
        by_object = model(x)
        c.remove()
        c = apply_cascade(model, keep_ratio=0.5, start_block=0, schedule_steps=None, fold="drop")
        by_keywords = model(x)
        c.remove()
    assert c.config == cfg and torch.equal(by_object, by_keywords)
    assert cascade_macs(model, (3, 32, 32), cfg) == cascade_macs(model, (3, 32, 32), **vars(cfg))
    keep = fit_keep_ratio(model, (3, 32, 32), 0.8, cfg)
    assert cascade_macs(model, (3, 32, 32), cfg, keep_ratio=keep) <= 0.8 * cascade_macs(model, (3, 32, 32), cfg, keep_ratio=1.0)
    assert cfg.replace(keep_ratio=keep).keep_ratio == keep and cfg.keep_ratio == 0.5  # frozen: a copy


def test_cascade_config_refuses_bad_options_before_anything_changes():
    from tp_vit_plugins.cpvit import CascadeConfig

    model = make_model(num_heads=4)
    with pytest.raises(TypeError, match="unknown cascade option"):
        apply_cascade(model, keep_tokens=3)
    with pytest.raises(ValueError, match="keep_ratio"):
        CascadeConfig(keep_ratio=0.0)
    with pytest.raises(ValueError, match="merging needs mode='drop'"):
        CascadeConfig(mode="mask", fold="merge")
    assert CascadeConfig(mode="mask").fold == "drop" and CascadeConfig().fold == "merge"
    with pytest.raises(TypeError, match="schedule_power"):
        apply_cascade(model, schedule_power=0.5)
    assert find_cascade(model) is None and "forward" not in vars(model.blocks[0].attn)
    with pytest.raises(TypeError, match="config must be a CascadeConfig"):  # 0.4: keep_ratio is keyword-only
        apply_cascade(model, 0.5)
    assert find_cascade(model) is None and "forward" not in vars(model.blocks[0].attn)


def test_random_scores_with_a_calibrated_range_run_in_batch_chunks(x64, monkeypatch):
    """The random scorer wants no token statistic: a chunked scoring attention passes that on (no cat of None)."""
    import tp_vit_plugins.hosts.timm.blocks as blocks

    model = deeper("vit", num_heads=4)
    cascade = apply_cascade(model, keep_ratio=0.5, score="random", beta=0.5, calib=[x64])
    with torch.no_grad():
        whole = model(x64)
        monkeypatch.setattr(blocks, "CHUNK_BYTES", 1)  # one image per chunk
        torch.testing.assert_close(model(x64), whole, rtol=1e-5, atol=1e-5)
    cascade.remove()


def test_cumulative_head_scores_weigh_each_patch_by_its_cumulative_score():
    torch.manual_seed(0)
    probs = torch.rand(2, 3, 5, 5).softmax(-1)
    plain = head_scores(probs, 1)
    uniform = tpv.cpvit.maths.cumulative_head_scores(probs, torch.ones(2, 4), 1)
    torch.testing.assert_close(uniform, plain / 4)  # equal token scores: the block's head score, scaled
    one = torch.zeros(2, 4)
    one[:, 2] = 5.0
    torch.testing.assert_close(tpv.cpvit.maths.cumulative_head_scores(probs, one, 1), probs[..., 3].amax(2))
    assert torch.equal(tpv.cpvit.maths.cumulative_head_scores(probs, None, 1), plain)  # nothing accumulated yet


def test_the_cascade_schedule_keeps_a_mean_share():
    counts = keep_schedule(196, 12, 0.5, 0, mean=True)
    assert counts[0] == 196 and all(a >= b for a, b in zip(counts, counts[1:]))
    assert abs(sum(counts) / (12 * 196) - 0.5) < 0.01
    ratios = [b / a for a, b in zip(counts[1:], counts[2:])]
    assert max(ratios) - min(ratios) < 0.05  # every block keeps the same share of what it receives
    with pytest.raises(ValueError, match="out of reach"):
        keep_schedule(196, 2, 0.5, 0, mean=True)
    with pytest.raises(ValueError, match="schedule_steps=None"):
        tpv.cpvit.CascadeConfig(keep_mean=True)
