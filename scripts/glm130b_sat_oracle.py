"""Cross-check GLM-130B against the official SwissArmyTransformer 0.2.12 code itself (a second oracle).

Not a test (it needs SAT from PyPI); run by hand:

    pip download --no-deps SwissArmyTransformer==0.2.12 -d /tmp/sat
    python -m zipfile -e /tmp/sat/SwissArmyTransformer-0.2.12-py3-none-any.whl /tmp/sat/ext
    python scripts/glm130b_sat_oracle.py /tmp/sat/ext            # fp16, as released
    python scripts/glm130b_sat_oracle.py /tmp/sat/ext --fp32     # fp32 (see below)

SAT's GLM130B runs on CPU with deepspeed / tensorboardX / datasets stubbed (only imported, never
used by the forward) and apex absent (its fallbacks are the plain torch paths). It builds the tiny
GLM-130B of `llmzoo.hf.glm.tiny_config()`, loads loud random weights with the official names and
compares its logits with `llmzoo.reference.glm130b.glm_forward` and with llmzoo on the pure-context,
[gMASK] and [MASK] batches. The official attention casts the softmax output with `.half()`, so an
fp32 run copies SAT to a temp dir with that one line changed to `.type_as(value_layer)`.
The rotary inv_freq buffer is kept in fp16 in both runs, as the released fp16 model has it.
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import os
import shutil
import sys
import tempfile
import types
from pathlib import Path


def stub_imports(root: Path) -> None:
    """deepspeed / tensorboardX stubs on disk, and a finder that satisfies other optional imports."""
    ck = root / "deepspeed" / "runtime" / "activation_checkpointing"
    ck.mkdir(parents=True, exist_ok=True)
    for d in (root / "deepspeed", root / "deepspeed" / "runtime", ck):
        (d / "__init__.py").touch()
    (ck / "checkpointing.py").write_text(
        "def checkpoint(*a, **k): raise NotImplementedError\n"
        "def get_cuda_rng_tracker(): return None\n"
        "def model_parallel_cuda_manual_seed(*a, **k): pass\n"
    )
    (root / "tensorboardX").mkdir(exist_ok=True)
    (root / "tensorboardX" / "__init__.py").write_text("class SummaryWriter: pass\n")

    class Any(types.ModuleType):
        __path__: list = []

        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return type(name, (), {"__init__": lambda self, *a, **k: None})

    class Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        ROOTS = {"datasets", "webdataset", "icetk", "sentencepiece", "boto3", "cpm_kernels", "scipy"}

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in self.ROOTS:
                return importlib.machinery.ModuleSpec(name, self, is_package=True)
            return None

        def create_module(self, spec):
            return Any(spec.name)

        def exec_module(self, module):
            pass

    sys.path.insert(0, str(root))
    sys.meta_path.append(Finder())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sat", type=Path, help="folder holding the extracted SwissArmyTransformer package")
    p.add_argument("--fp32", action="store_true", help="run in fp32 (softmax output cast patched)")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp())
    sat_root = args.sat
    if args.fp32:
        sat_root = tmp / "sat"
        shutil.copytree(args.sat / "SwissArmyTransformer", sat_root / "SwissArmyTransformer")
        f = sat_root / "SwissArmyTransformer" / "model" / "official" / "glm130B_model.py"
        src = f.read_text()
        assert src.count("attention_probs = attention_probs.half()") == 1
        f.write_text(src.replace("attention_probs = attention_probs.half()",
                                 "attention_probs = attention_probs.type_as(value_layer)"))
    stub_imports(tmp / "stubs")
    sys.path.insert(0, str(sat_root))

    import torch
    import torch.distributed as dist

    torch.cuda.current_device = lambda: "cpu"  # SAT allocates on the current CUDA device
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    dist.init_process_group("gloo", rank=0, world_size=1)
    from SwissArmyTransformer import mpu
    from SwissArmyTransformer.model.official.glm130B_model import GLM130B

    from llmzoo.hf import glm
    from llmzoo.reference.glm130b import glm_forward, random_official_state

    mpu.initialize_model_parallel(1)
    dt = torch.float32 if args.fp32 else torch.float16
    cfg = glm.tiny_config()
    a = cfg.block.attention
    ns = argparse.Namespace(
        num_layers=cfg.n_layers, vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, num_attention_heads=a.n_heads,
        max_sequence_length=cfg.max_seq_len, hidden_dropout=0.0, attention_dropout=0.0,
        inner_hidden_size=cfg.block.mlp.d_ff, hidden_size_per_attention_head=None, checkpoint_activations=False,
        checkpoint_num_layers=1, layernorm_order="post", skip_init=True, use_gpu_initialization=False,
        fp16=not args.fp32, model_parallel_size=1,
    )
    sat = GLM130B(ns).eval().to(dt)  # reinit builds dense_h_to_4h in half whatever args.fp16 says
    rot = sat.mixins["rotary-embedding"].rotary_emb
    rot.inv_freq = rot.inv_freq.half()
    state = random_official_state(vocab=cfg.vocab_size, hidden=cfg.d_model, num_layers=cfg.n_layers,
                                  num_heads=a.n_heads, inner=cfg.block.mlp.d_ff, seed=7)
    missing, unexpected = sat.load_state_dict({k: v for k, v in state.items() if "inv_freq" not in k}, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    cast = {k: v.to(dt) if "inv_freq" not in k else v for k, v in state.items()}
    with tempfile.TemporaryDirectory() as d:
        glm.save_sat_checkpoint(glm.split_tp(state, 2), d)
        ours = glm.load_glm(d, cfg, dtype=dt)
    print(f"SwissArmyTransformer GLM130B ({dt}) vs reference and llmzoo, max|Δlogits|:")
    for kind, b in glm.glm_test_batch(cfg, seed=4).items():
        with torch.no_grad():
            out = sat(b["input_ids"], b["position_ids"], b["official_mask"])[0].float()
            ref = glm_forward([cast], b["input_ids"], b["position_ids"], b["official_mask"],
                              num_layers=cfg.n_layers, num_heads=a.n_heads).float()
            mine = ours(b["input_ids"], position_ids=b["position_ids"], prefix_len=b["prefix_len"]).float()
        print(f"  {kind:<8} reference {float((out - ref).abs().max()):.3g}   llmzoo {float((out - mine).abs().max()):.3g}"
              f"   (logit scale {float(out.abs().max()):.3g})")


if __name__ == "__main__":
    main()
