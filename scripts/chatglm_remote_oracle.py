"""Cross-check ChatGLM-6B against THUDM/chatglm-6b's own remote code (a second oracle).

Not a test (it needs the hub repo's `modeling_chatglm.py` and `configuration_chatglm.py`); run by hand:

    python scripts/chatglm_remote_oracle.py /path/to/folder/with/modeling_chatglm.py

The official ChatGLMForConditionalGeneration is built from the tiny config of the `chatglm` adapter
(2-D and 1-D positions), given the same loud weights as `llmzoo.reference.glm130b.ChatGLMReference`,
and run on sequences with [MASK]/[gMASK] and bos ([sop]); for 2-D positions and 1-D [gMASK] it builds
its own mask and position ids from the tokens (get_masks / get_position_ids). Its rotary inv_freq
buffers are put back to fp16 after `.float()`, as the released `.half()` model has them.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import torch


def main() -> None:
    src = Path(sys.argv[1])
    pkg = Path(tempfile.mkdtemp()) / "chatglm_remote"
    pkg.mkdir()
    for name in ("modeling_chatglm.py", "configuration_chatglm.py"):
        shutil.copy(src / name, pkg / name)
    (pkg / "__init__.py").touch()
    root = Path(__file__).resolve().parent.parent
    sys.path[:0] = [str(pkg.parent), str(root / "tests")]
    from chatglm_remote import modeling_chatglm as official
    from chatglm_remote.configuration_chatglm import ChatGLMConfig
    from test_glm import chatglm_batch

    from llmzoo.hf import from_pretrained, get_adapter
    from llmzoo.parity import loud_init_

    adapter = get_adapter("chatglm")
    print("official modeling_chatglm.py vs reference and llmzoo, fp32, max|Δlogits|:")
    for two_d in (True, False):
        hf = {**adapter.tiny_hf_config(), "position_encoding_2d": two_d}
        ref = loud_init_(adapter.reference(hf), seed=2)
        folder = tempfile.mkdtemp()
        adapter.save_reference(ref, folder, max_shard_size=40_000)
        ours = from_pretrained(folder)
        cfg = ChatGLMConfig(**{k: v for k, v in hf.items() if k != "model_type"})
        off = official.ChatGLMForConditionalGeneration(cfg, empty_init=False).float().eval()
        for layer in off.transformer.layers:
            layer.attention.rotary_emb.inv_freq = layer.attention.rotary_emb.inv_freq.half()
        missing, unexpected = off.load_state_dict(ref.state_dict(), strict=False)
        assert not [m for m in missing if "inv_freq" not in m] and not unexpected, (missing, unexpected)
        for token in ("mask_token_id", "gmask_token_id"):
            ids, pos, mask, prefix = chatglm_batch(hf, token)
            kw = {}
            if not two_d:
                pos = pos[:, 0].clone() if token == "mask_token_id" else torch.arange(ids.shape[1]).expand(2, -1)
                kw = {"position_ids": pos} if token == "mask_token_id" else {}
            with torch.no_grad():
                o = off(input_ids=ids, **kw).logits.float()
                r = ref(ids, position_ids=pos, glm_mask=mask)
                z = ours(ids, position_ids=pos, prefix_len=prefix)
            print(f"  {'2-D' if two_d else '1-D'} {token:<15} reference {float((o - r).abs().max()):.3g}   "
                  f"llmzoo {float((o - z).abs().max()):.3g}   (logit scale {float(o.abs().max()):.3g})")


if __name__ == "__main__":
    main()
