"""A checkpoint's tokenizer through the `tokenizers` library (no transformers at runtime).

`tokenizers` is an optional dependency (extra `generate`), imported only when a tokenizer is loaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from .errors import require


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from None


def _token_str(value: Any) -> str | None:
    """tokenizer_config.json writes special tokens as a string or as {"content": ...}."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


class Tokenizer:
    """tokenizer.json of a checkpoint folder, with the ids generation needs.

    eos_token_ids: from generation_config.json, else config.json, else tokenizer_config.json's eos
    token. pad_token_id: the pad token if the files name one, else the first eos id, else 0."""

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: no tokenizer.json in the checkpoint folder (llmzoo reads tokenizers in the "
                "`tokenizers` JSON format only; sentencepiece-only checkpoints need converting)"
            )

        _Tokenizer = require("tokenizers", "generate", "reading tokenizer.json").Tokenizer
        self.folder, self.backend = folder, _Tokenizer.from_file(str(path))
        tok_cfg = _read_json(folder / "tokenizer_config.json")
        ids: Any = _read_json(folder / "generation_config.json").get("eos_token_id")
        if ids is None:
            ids = _read_json(folder / "config.json").get("eos_token_id")
        if ids is None and _token_str(tok_cfg.get("eos_token")) is not None:
            ids = self.backend.token_to_id(_token_str(tok_cfg["eos_token"]))
        self.eos_token_ids: list[int] = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
        pad = _token_str(tok_cfg.get("pad_token"))
        pad_id = self.backend.token_to_id(pad) if pad is not None else None
        self.pad_token_id = pad_id if pad_id is not None else (self.eos_token_ids or [0])[0]

    def encode(self, text: str) -> list[int]:
        """Token ids with the special tokens tokenizer.json's post-processor adds (e.g. BOS)."""
        return self.backend.encode(text).ids

    def encode_batch(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """Left-padded input_ids (B, P) and attention_mask (B, P), ready for `llmzoo.generate`."""
        rows = [self.encode(t) for t in texts]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            if r:
                ids[i, width - len(r) :] = torch.tensor(r)
                mask[i, width - len(r) :] = 1
        return ids, mask

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def stream_decoder(self) -> "StreamDecoder":
        return StreamDecoder(self)


class StreamDecoder:
    """Text as tokens arrive: `push(id)` returns the new text, holding back a byte-level piece that
    does not yet decode to whole characters (shown as U+FFFD until its last byte arrives)."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer, self.ids, self.shown = tokenizer, [], ""

    def push(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd") or not text.startswith(self.shown):
            return ""
        new, self.shown = text[len(self.shown) :], text
        return new


# ------------------------------------------------------------------------------ a tokenizer for tiny checkpoints

# pad, bos, eos, unk: ids 0..3 of every tiny tokenizer (T5 has no bos: pad 0, eos 1, unk 2, as in t5-small)
SPECIAL_TOKENS = {"pad": "<pad>", "bos": "<s>", "eos": "</s>", "unk": "<unk>"}


def _characters(n: int) -> list[str]:
    """n distinct printable characters: ASCII first (space, newline, tab, letters, digits,
    punctuation), then Latin-1, Latin Extended, Greek, Cyrillic… in code-point order."""
    chars = [" ", "\n", "\t"] + [chr(c) for c in range(33, 127)]
    code = 161
    while len(chars) < n:
        ch = chr(code)
        if ch.isprintable() and not ch.isspace() and ch != "\u00ad":
            chars.append(ch)
        code += 1
    return chars[:n]


def tiny_tokenizer(vocab_size: int, bos: bool = True):
    """A character-level `tokenizers.Tokenizer` built offline whose ids fill exactly `vocab_size`:
    the special tokens first (<pad> 0, <s> 1 if bos, </s>, <unk>), then one token per character.
    Encoding prepends <s> when bos; decoding joins the characters back."""
    from tokenizers import Tokenizer as _Tokenizer, decoders, models, processors

    specials = [SPECIAL_TOKENS[k] for k in (("pad", "bos", "eos", "unk") if bos else ("pad", "eos", "unk"))]
    if vocab_size < len(specials) + 1:
        raise ValueError(f"tiny_tokenizer: vocab_size {vocab_size} leaves no room for characters")
    tokens = specials + _characters(vocab_size - len(specials))
    tok = _Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, [], unk_token=SPECIAL_TOKENS["unk"]))
    tok.add_special_tokens(specials)
    tok.decoder = decoders.Fuse()
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{SPECIAL_TOKENS['bos']} $A", pair=f"{SPECIAL_TOKENS['bos']} $A $B",
            special_tokens=[(SPECIAL_TOKENS["bos"], 1)])
    return tok


def save_tiny_tokenizer(folder: str | Path, vocab_size: int, bos: bool = True, max_len: int | None = None) -> dict[str, int]:
    """Write tokenizer.json and tokenizer_config.json for a tiny checkpoint; returns the special ids
    ({"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "unk_token_id": 3} with bos)."""

    require("tokenizers", "generate", "writing a tiny checkpoint's tokenizer.json")
    folder = Path(folder)
    tok = tiny_tokenizer(vocab_size, bos)
    tok.save(str(folder / "tokenizer.json"))
    names = ("pad", "bos", "eos", "unk") if bos else ("pad", "eos", "unk")
    ids = {f"{k}_token_id": tok.token_to_id(SPECIAL_TOKENS[k]) for k in names}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
              **{f"{k}_token": SPECIAL_TOKENS[k] for k in names}}
    if max_len is not None:
        config["model_max_length"] = max_len
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return ids
