"""Microbenchmarks of the CP-ViT cascade's own operations (merge, scoring attention) on CPU.

    python benchmarks/cascade_ops.py [--threads 2]

Shapes: the embedded MNIST ViT (3 heads, 50 tokens, 96 channels) and DeiT-small (6 heads, 197
tokens, 384 channels), batch 1 and 64 (DeiT-small's merge also at 16), random inputs.

* merge: :func:`tp_vit_plugins.cpvit.patch.merge_into_kept` (running mean over flattened rows)
  vs the size-weighted average written directly (gather kept and dropped tokens, scale both by
  their sizes, ``scatter_add``, divide, concatenate the prefix): the same result.
* scoring attention: eager attention plus the cumulative token statistic with the whole batch in
  one piece, the same in :data:`~tp_vit_plugins.cpvit.patch.CHUNK_BYTES` chunks (what the cascade
  runs), and fused SDPA without any statistic (what a non-scoring block runs).

Medians of ``torch.utils.benchmark.Timer.blocked_autorange``. Writes the "Cascade ops" section of
RESULTS.md.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from common import write_section
from torch.utils.benchmark import Timer

from tp_vit_plugins.cpvit.maths import merge_into_kept, token_scores
from tp_vit_plugins.hosts.timm.blocks import _attend_in_chunks


def direct_merge(x, sizes, keep, num_prefix, dropped):
    """The size-weighted average as written: every kept and dropped token scaled, scattered, divided."""
    patches = x[:, num_prefix:]
    C = x.shape[-1]
    kx = patches.gather(1, keep[..., None].expand(-1, -1, C))
    dx = patches.gather(1, dropped[..., None].expand(-1, -1, C))
    ks, ds = sizes.gather(1, keep), sizes.gather(1, dropped)
    dst = (dx @ F.normalize(kx, dim=-1).transpose(1, 2)).argmax(-1)
    total = (kx * ks[..., None]).scatter_add(1, dst[..., None].expand(-1, -1, C), dx * ds[..., None])
    new_sizes = ks.scatter_add(1, dst, ds)
    return torch.cat([x[:, :num_prefix], total / new_sizes[..., None]], dim=1), new_sizes


class _Attn:
    scale = 0.125
    attn_drop = torch.nn.Identity()


def one_piece(q, k, v):
    probs = ((q * _Attn.scale) @ k.transpose(-2, -1)).softmax(-1)
    return probs @ v, token_scores(probs, 1)


def timed(stmt: str, **env) -> float:
    return Timer(stmt, globals=env).blocked_autorange(min_run_time=0.5).median


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    merge_rows = ["| shape | batch | direct formula ms | merge_into_kept ms | ratio |", "|---|---|---|---|---|"]
    for name, N, C, batches in (("embedded (50 tokens, 96 ch)", 50, 96, (1, 64)), ("DeiT-small (197, 384)", 197, 384, (1, 16))):
        for B in batches:
            P = N - 1
            n = round(0.85 * P)
            x = torch.randn(B, N, C, generator=g)
            sizes = torch.rand(B, P, generator=g) + 1
            order = torch.rand(B, P, generator=g).argsort(dim=1)
            keep, dropped = order[:, :n].sort(dim=1).values, order[:, n:]
            a, b = direct_merge(x, sizes, keep, 1, dropped), merge_into_kept(x, sizes, keep, 1, dropped)
            torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-5)
            env = dict(x=x, sizes=sizes, keep=keep, dropped=dropped, f=direct_merge, m=merge_into_kept)
            t_direct, t_new = timed("f(x, sizes, keep, 1, dropped)", **env), timed("m(x, sizes, keep, 1, dropped)", **env)
            merge_rows.append(f"| {name} | {B} | {1e3 * t_direct:.3f} | {1e3 * t_new:.3f} | {t_new / t_direct:.2f} |")
            print(merge_rows[-1], flush=True)
    attn_rows = [
        "| shape | batch | one piece ms | chunks ms | fused SDPA (no statistic) ms |",
        "|---|---|---|---|---|",
    ]
    for name, H, N, d in (("embedded (3 heads, 50 tokens)", 3, 50, 32), ("DeiT-small (6 heads, 197 tokens)", 6, 197, 64)):
        for B in (1, 64):
            q, k, v = torch.randn(3, B, H, N, d, generator=g).unbind(0)
            sink = []
            env = dict(q=q, k=k, v=v, one=one_piece, chunks=_attend_in_chunks, a=_Attn, ts=token_scores, s=sink, F=F)
            t_one = timed("one(q, k, v)", **env)
            t_chunks = timed("s.clear(); chunks(a, q, k, v, None, lambda p: ts(p, 1), s.append)", **env)
            t_sdpa = timed("F.scaled_dot_product_attention(q, k, v, scale=a.scale)", **env)
            attn_rows.append(f"| {name} | {B} | {1e3 * t_one:.2f} | {1e3 * t_chunks:.2f} | {1e3 * t_sdpa:.2f} |")
            print(attn_rows[-1], flush=True)
    body = (
        f"`python benchmarks/cascade_ops.py --threads {args.threads}` (torch {torch.__version__}, {args.threads} CPU "
        "threads; medians of `torch.utils.benchmark`).\n\nMerge (85 % of the patch tokens kept):\n\n"
        + "\n".join(merge_rows)
        + "\n\nScoring attention (attention output plus the cumulative token statistic):\n\n"
        + "\n".join(attn_rows)
    )
    write_section("Cascade ops", body)


if __name__ == "__main__":
    main()
