"""llmzoo.parallel on CPU with gloo: TP, FSDP2, TP+FSDP2 and EP logits equal the single-process model,
sharded HF loading reads only each rank's slices, DCP reshards 2 → 4 ranks, TP generation, memory.

One spawned run per world size (2 and 4; world size 1 runs in this process) batches every check;
the ranks write their measurements to files and the assertions run here."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

import llmzoo
from llmzoo import parallel as P
from llmzoo.hf import from_pretrained, save_pretrained
from llmzoo.hf.rules import Concat, Deinterleave, Lazy, Split, SplitInterleavedQKV, StackExperts, Transpose
from llmzoo.scaling import scale_down

# dense GQA (8 heads, 2 KV heads: replicated KV at tp=4), MQA (tied head, parallel block),
# MLA + MoE (shared experts, group routing), ALiBi (tied head, fused interleaved QKV in HF)
# GPT-OSS: per-head sinks split with the heads, biased experts whole per rank (ep)
# Llama-4: chunked + NoPE layers, experts weighted on their input, split on their inner dim (ep=False)
MODELS = ["llama-2-70b", "falcon-7b", "deepseek-v3", "bloom-7b1", "gpt-oss-20b", "llama-4-maverick-17b-128e"]
# world size → (model, tp, dp, ep) runs; every run compares logits and measures memory. ep=True: experts
# over the tp ranks (all-reduce); ep="dp": over the dp ranks, tokens exchanged with all-to-all.
# With dp > 1 each data-parallel rank feeds its own sequence (rank r: sequence r % 2).
JOBS = {
    1: [(m, 1, 1, False) for m in MODELS],
    2: [("llama-2-70b", 2, 1, False), ("falcon-7b", 2, 1, False), ("deepseek-v3", 2, 1, True),
        ("deepseek-v3-fp8", 2, 1, False),
        ("deepseek-v3", 1, 2, "dp"), ("bloom-7b1", 2, 1, False), ("bloom-7b1", 1, 2, False),
        ("gpt-oss-20b", 2, 1, True), ("gpt-oss-20b", 1, 2, "dp"), ("llama-4-maverick-17b-128e", 2, 1, False)],
    4: [("llama-2-70b", 4, 1, False), ("llama-2-70b", 1, 4, False), ("falcon-7b", 2, 2, False),
        ("deepseek-v3", 2, 2, "dp"), ("deepseek-v3", 2, 2, False), ("bloom-7b1", 4, 1, False)],
}
GENERATE = {2: ["llama-2-70b", "bloom-7b1", "gpt-oss-20b"], 4: ["falcon-7b"]}  # (tp = world size, or 2 × 2 for falcon)
GRADS = {2: [("deepseek-v3", 2, 1, True)], 4: [("llama-2-70b", 4, 1, False), ("deepseek-v3", 2, 2, "dp")]}  # backward
EXPORT = {4: [("deepseek-v3", "dp"), ("bloom-7b1", False)]}  # sharded model → HF safetensors → from_pretrained
NEW_TOKENS = 4


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 256, (2, 12), generator=g)
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, 9:] = 0  # right padding
    return ids, mask


def _mesh_dims(tp: int, dp: int) -> dict:
    return {"tp": "tp" if tp > 1 else None, "fsdp": "dp" if dp > 1 or tp == 1 else None}


def _worker(rank: int, world: int, port: int, root: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        ids, mask = _batch()
        out: dict = {"runs": [], "generate": {}}
        for name, tp, dp, ep in JOBS[world]:
            mesh = P.make_mesh(dp=dp, tp=tp)
            model = P.from_pretrained_sharded(f"{root}/{name}", mesh, ep=ep, **_mesh_dims(tp, dp))
            sample = mesh["dp"].get_local_rank() % 2 if dp > 1 else None
            rows = slice(None) if sample is None else slice(sample, sample + 1)
            with torch.no_grad():
                logits = model(ids[rows], attention_mask=mask[rows])
            measured = torch.tensor(P.param_bytes(model))
            dist.all_reduce(measured, op=dist.ReduceOp.MAX)
            est = P.memory_estimate(model.config, tp=tp, dp=dp, ep=ep, dtype=torch.float32)
            out["runs"].append(dict(name=name, tp=tp, dp=dp, ep=ep, logits=logits, sample=sample, measured=int(measured),
                                    estimate=est["params"], **model.load_stats))
            if name in GENERATE.get(world, []) and tp > 1:
                cache = P.sharded_cache(model, 2, ids.shape[1] + NEW_TOKENS)
                gen = llmzoo.generate(model, ids, mask, max_new_tokens=NEW_TOKENS, cache=cache)
                out["generate"][name] = (gen, cache.nbytes(), tp)
            if (name, tp, dp, ep) in GRADS.get(world, []):
                model.zero_grad()
                model(ids[rows], attention_mask=mask[rows]).pow(2).mean().backward()
                want = torch.load(f"{root}/grads-{name}.pt")
                err = 0.0
                for n, p in model.named_parameters():  # full_tensor: a collective, same order on every rank
                    g = p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad
                    err = max(err, ((g - want[n]).abs().max() / want[n].abs().max().clamp(min=1e-12)).item())
                out.setdefault("grads", {})[name] = err
            if (name, ep) in EXPORT.get(world, []):
                folder = f"{root}/export-{name}-{tp}x{dp}"
                P.save_hf(model, folder, max_shard_size="40KB")
                if rank == 0:
                    with torch.no_grad():
                        out.setdefault("export", {})[name] = from_pretrained(folder).eval()(ids, attention_mask=mask)
            if world == 2 and name == "llama-2-70b":
                P.save_checkpoint(model, f"{root}/dcp-llama")
            if world == 2 and name == "deepseek-v3" and ep is True:
                P.save_checkpoint(model, f"{root}/dcp-deepseek")
            saved = f"{root}/dcp-{name.split('-')[0]}"
            if world == 4 and (name, tp, ep) in (("llama-2-70b", 4, False), ("deepseek-v3", 2, False)) and os.path.isdir(saved):
                # reshard 2 → 4: a differently seeded model of this split loads the DCP directory
                other = llmzoo.build(model.config, device="meta")
                P.parallelize(other, mesh, ep=ep, **_mesh_dims(tp, dp))
                P.init_sharded(other, seed=123)
                P.load_checkpoint(other, saved)
                theirs = dict(other.named_parameters())
                same = all(torch.equal(P._local(p), P._local(theirs[n])) for n, p in model.named_parameters())
                out.setdefault("dcp", {})[name] = same
        torch.save(out, f"{root}/rank{rank}-of-{world}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Each model as a sharded HF checkpoint (several safetensors files), drawn by init_sharded."""
    root = tmp_path_factory.mktemp("dist")
    ids, mask = _batch()
    ref = {}
    for name in MODELS:
        model = P.init_sharded(llmzoo.build(scale_down(name, preset="tiny"), device="meta"), seed=0)
        save_pretrained(model, root / name, max_shard_size="40KB")
        single = from_pretrained(root / name).eval()  # the single-process reference, through the plain loader
        with torch.no_grad():
            logits = single(ids, attention_mask=mask)
        gen = llmzoo.generate(single, ids, mask, max_new_tokens=NEW_TOKENS)
        if any(name == job[0] for jobs in GRADS.values() for job in jobs):
            single(ids, attention_mask=mask).pow(2).mean().backward()
            torch.save({n: p.grad for n, p in single.named_parameters()}, root / f"grads-{name}.pt")
        ref[name] = (logits, gen, llmzoo.StaticCache.for_model(single, 2, ids.shape[1] + NEW_TOKENS).nbytes())
    # DeepSeek-V3's shipping format: e4m3 projection weights with block scales (16×16 tiles here)
    from test_fp8 import _quantised_copy

    _quantised_copy(root / "deepseek-v3", root / "deepseek-v3-fp8", block=16)
    with torch.no_grad():
        ref["deepseek-v3-fp8"] = (from_pretrained(root / "deepseek-v3-fp8").eval()(ids, attention_mask=mask), None, None)
    return root, ref


def _run(world: int, root) -> list[dict]:
    if world == 1:
        _worker(0, 1, _port(), str(root))
    else:
        torch.multiprocessing.spawn(_worker, args=(world, _port(), str(root)), nprocs=world)
    return [torch.load(root / f"rank{r}-of-{world}.pt") for r in range(world)]


@pytest.mark.parametrize("world", [1, 2, 4])
def test_sharded_logits_loading_memory(world, checkpoints):
    root, ref = checkpoints
    ranks = _run(world, root)
    _, mask = _batch()
    real = mask.bool()
    for i, run in enumerate(ranks[0]["runs"]):
        what = f"{run['name']} tp={run['tp']} dp={run['dp']} ep={run['ep']}"
        want = ref[run["name"]][0]
        for r, out in enumerate(ranks):
            got, s = out["runs"][i]["logits"], out["runs"][i]["sample"]
            w, keep = (want, real) if s is None else (want[s : s + 1], real[s : s + 1])
            err = (got - w).abs()[keep].max().item()
            assert err <= 1e-5, f"{what} rank {r}: max |Δlogits| {err:.2e}"
        assert run["measured"] == run["estimate"], f"{what}: measured {run['measured']} B, estimated {run['estimate']} B"
        total, reads = run["bytes_total"], [out["runs"][i]["bytes_read"] for out in ranks]
        if run["tp"] == 1:  # FSDP shards every parameter on dim 0: the reads tile the checkpoint
            # (buffers such as the router's score_bias stay whole on every rank: a few bytes twice)
            assert total <= sum(reads) <= 1.01 * total, f"{what}: ranks read {reads}, checkpoint holds {total}"
            assert max(reads) <= 1.1 * total / world, f"{what}: ranks read {reads} of {total}"
        else:  # replicated norms, router, latents, (MQA) KV heads: a little more than total / world
            assert max(reads) < 0.75 * total, f"{what}: ranks read {reads} of {total}"
    for name, (gen, nbytes, tp) in ranks[0].get("generate", {}).items():
        _, want_gen, full_cache = ref[name]
        for out in ranks:
            assert torch.equal(out["generate"][name][0], want_gen), f"{name}: TP generation differs"
        kv = scale_down(name, preset="tiny").block.attention.n_kv_heads  # MQA: the one KV head on every rank
        assert nbytes == full_cache * max(1, kv // tp) // kv, f"{name}: rank's KV cache {nbytes} B of {full_cache} B"
    assert set(ranks[0].get("generate", {})) == set(GENERATE.get(world, []))  # every check above ran
    assert set(ranks[0].get("export", {})) == {n for n, _ in EXPORT.get(world, [])}
    saved = {n for n in ("llama-2-70b", "deepseek-v3") if (root / f"dcp-{n.split('-')[0]}").is_dir()}
    assert set(ranks[0].get("dcp", {})) == (saved if world == 4 else set())  # 2 → 4 when [2] ran first
    assert set(ranks[0].get("grads", {})) == {job[0] for job in GRADS.get(world, [])}
    for name, err in ranks[0].get("grads", {}).items():  # training: gradients equal one process's
        assert all(out["grads"][name] <= 1e-5 for out in ranks), f"{name}: gradient rel. error {err:.2e}"
    for name, logits in ranks[0].get("export", {}).items():
        err = (logits - ref[name][0]).abs()[real].max().item()
        assert err <= 1e-5, f"{name}: exported from the sharded model, reloaded: max |Δlogits| {err:.2e}"
    for name, same in ranks[0].get("dcp", {}).items():
        assert all(out["dcp"][name] for out in ranks), f"{name}: DCP 2 → 4 ranks changed tensors"


def test_lazy_transforms_read_the_same_blocks():
    """Every rule transform's sliced form equals forward-then-slice, on random blocks."""
    from llmzoo.hf.fp8 import Dequantize, quantize_blockwise

    g = torch.Generator().manual_seed(0)
    q, s = quantize_blockwise(torch.randn(37, 50, generator=g), 16)
    cases = [
        (Transpose(), [torch.randn(6, 5, generator=g)]),
        (Concat(0), [torch.randn(3, 4, generator=g), torch.randn(5, 4, generator=g)]),
        (Concat(1), [torch.randn(3, 4, generator=g), torch.randn(3, 2, generator=g)]),
        (Split(0, sizes=[4, 2, 2]), [torch.randn(8, 3, generator=g)]),
        (SplitInterleavedQKV(8, 2, 3), [torch.randn(36, 5, generator=g)]),
        (SplitInterleavedQKV(4, 4, 2), [torch.randn(24, generator=g)]),
        (StackExperts(), [torch.randn(3, 4, generator=g) for _ in range(5)]),
        (Transpose(dims=(1, 2)), [torch.randn(3, 4, 5, generator=g)]),
        (Deinterleave(dim=1), [torch.randn(3, 8, 5, generator=g)]),
        (Dequantize(16), [q, s]),
    ]
    for t, xs in cases:
        reads = []
        lazies = [Lazy(x.shape, x.dtype, lambda r, x=x: reads.append(x[r].numel()) or x[r]) for x in xs]
        for full, lz in zip(t.forward(xs), t.lazy(lazies)):
            assert tuple(full.shape) == lz.shape, t
            for _ in range(10):
                lo = [int(torch.randint(0, n, (), generator=g)) for n in full.shape]
                region = tuple(slice(a, int(torch.randint(a + 1, n + 1, (), generator=g))) for a, n in zip(lo, full.shape))
                reads.clear()
                assert torch.equal(full[region], lz.read(region)), (t, region)
                # exactly the block's elements, nothing more (Deinterleave reads the block of all its
                # parts once, which the parts then share)
                if not isinstance(t, (Dequantize, Deinterleave)):
                    assert sum(reads) == full[region].numel(), (t, region, reads)


def test_memory_cli(capsys):
    from llmzoo.cli import main

    assert main(["memory", "llama-2-70b", "--tp", "8", "--dp", "2", "--dtype", "bf16", "--seq", "4096",
                 "--batch", "8"]) == 0
    text = capsys.readouterr().out
    est = P.memory_estimate("llama-2-70b", tp=8, dp=2, dtype="bfloat16", seq_len=4096, batch=8)
    assert f"{est['params'] / 2**30:.2f}" in text and f"{est['kv_cache'] / 2**30:.2f}" in text
    # GQA with 8 KV heads on 8 ranks: one KV head per rank, 4 of the 8 sequences per dp rank
    kv = llmzoo.kv_cache_bytes("llama-2-70b", seq_len=4096, batch=4, dtype="bfloat16") // 8
    assert est["kv_cache"] == kv
