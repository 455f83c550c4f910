"""Components registered outside llmzoo (tests/ext_components.py) work everywhere with zero edits to
llmzoo: YAML, exact parameter count, own init, scale-down, KV cache, generation and tensor parallelism
on 2 gloo ranks (docs/extending.md)."""

from __future__ import annotations

import math
import os
import socket

import torch
import torch.distributed as dist

import llmzoo
from ext_components import YAML, CosineAttention, ScaleNorm
from llmzoo import parallel as P
from llmzoo.cache import StaticCache
from llmzoo.config import load_config
from llmzoo.engine import Engine, SamplingParams
from llmzoo.params import count_params, kv_cache_bytes
from llmzoo.scaling import scale_down

NEW_TOKENS = 4


def _config(tmp_path):
    path = tmp_path / "cosine-scalenorm.yaml"
    path.write_text(YAML)
    return load_config(path)


def _ids() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 96, (2, 10), generator=g)
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, :3] = 0  # left padding
    return ids, mask


def test_selected_from_yaml_counted_and_initialised(tmp_path):
    config = _config(tmp_path)
    model = llmzoo.build(config)
    assert isinstance(model.blocks[0].attn, CosineAttention) and isinstance(model.final_norm, ScaleNorm)
    assert count_params(config).total == sum(p.numel() for p in model.parameters())
    norms = [m for m in model.modules() if isinstance(m, ScaleNorm)]
    assert len(norms) == 2 * config.n_layers + 1
    assert all(m.g.item() == torch.tensor(math.sqrt(config.d_model)).item() for m in norms)  # its own init, not N(0, 0.02)
    assert model.blocks[0].attn.q.weight.std().item() < 0.05  # the projections drawn N(0, 0.02)


def test_scaled_down(tmp_path):
    tiny = scale_down(_config(tmp_path))
    a = tiny.block.attention
    assert (tiny.d_model, a.type, a.n_heads, a.head_dim, a.v_head_dim) == (64, "cosine", 4, 16, 8)
    assert tiny.block.norm.type == "scalenorm"
    model = llmzoo.build(tiny)
    assert count_params(tiny).total == sum(p.numel() for p in model.parameters())


def test_generate_with_kv_cache(tmp_path):
    model = llmzoo.build(_config(tmp_path)).eval()
    ids, mask = _ids()
    cache = StaticCache.for_model(model, 2, ids.shape[1] + NEW_TOKENS)
    assert cache.nbytes() == kv_cache_bytes(model.config, ids.shape[1] + NEW_TOKENS, batch=2, dtype="float32")
    assert cache.k[0].shape[-1] == 12 and cache.v[0].shape[-1] == 8  # the layout the spec states
    out = llmzoo.generate(model, ids, mask, max_new_tokens=NEW_TOKENS, cache=cache)
    with torch.no_grad():  # the same tokens from full forwards over the growing sequence
        seq, m = ids, mask
        for _ in range(NEW_TOKENS):
            nxt = model(seq, attention_mask=m)[:, -1].argmax(-1, keepdim=True)
            seq, m = torch.cat([seq, nxt], 1), torch.cat([m, torch.ones_like(nxt)], 1)
    assert torch.equal(out, seq)


def test_paged_engine(tmp_path):
    """The paged cache asks the spec for its layout too: the engine's tokens are generate's."""
    model = llmzoo.build(_config(tmp_path)).eval()
    ps = [[5, 7, 11, 13, 2], [3] * 9]
    want = [llmzoo.generate(model, torch.tensor([p]), max_new_tokens=NEW_TOKENS)[0, len(p):].tolist() for p in ps]
    engine = Engine(model, block_size=4, max_batch_tokens=8, n_blocks=16)
    assert engine.run(ps, SamplingParams(max_tokens=NEW_TOKENS)) == want


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, yaml_path: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = llmzoo.build(load_config(yaml_path), device="meta")
        P.parallelize(model, P.make_mesh(tp=world), tp="tp", fsdp=None)
        P.init_sharded(model, seed=0)
        ids, mask = _ids()
        with torch.no_grad():
            logits = model.eval()(ids, attention_mask=mask)
        cache = P.sharded_cache(model, 2, ids.shape[1] + NEW_TOKENS)
        gen = llmzoo.generate(model, ids, mask, max_new_tokens=NEW_TOKENS, cache=cache)
        heads = model.blocks[0].attn.q.weight.to_local().shape[0] // 12
        g = model.final_norm.g.item()  # init_sharded: the norm's own init on every rank
        torch.save({"logits": logits, "gen": gen, "heads": heads, "kv": cache.nbytes(), "g": g}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_tensor_parallel_on_two_ranks(tmp_path):
    config = _config(tmp_path)
    single = P.init_sharded(llmzoo.build(config, device="meta"), seed=0).eval()
    ids, mask = _ids()
    with torch.no_grad():
        want = single(ids, attention_mask=mask)
    want_gen = llmzoo.generate(single, ids, mask, max_new_tokens=NEW_TOKENS)
    torch.multiprocessing.spawn(_worker, args=(2, _port(), str(tmp_path / "cosine-scalenorm.yaml"), str(tmp_path)),
                                nprocs=2)
    full_kv = StaticCache.for_model(single, 2, ids.shape[1] + NEW_TOKENS).nbytes()
    for r in range(2):
        got = torch.load(tmp_path / f"rank{r}.pt")
        assert got["heads"] == 2  # 4 heads over 2 ranks
        assert got["g"] == torch.tensor(math.sqrt(config.d_model)).item()
        assert got["kv"] == full_kv // 2
        torch.testing.assert_close(got["logits"], want, atol=1e-5, rtol=0)
        assert torch.equal(got["gen"], want_gen)
