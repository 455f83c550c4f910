"""`llmzoo serve` with the official openai client, on 127.0.0.1: a tiny Llama checkpoint (loud weights)
with a tokenizer.json trained here offline. 16 concurrent requests (completions and chat, streaming and
not, stop strings, max_tokens) equal llmzoo.generate for the same prompts (chat prompts rendered by
transformers' apply_chat_template); bad requests get OpenAI-style errors; disconnecting clients free
their blocks; no block is leaked and the server keeps serving."""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

import llmzoo  # noqa: E402
from conftest import save_tiny_checkpoint  # noqa: E402  (tests/ is on sys.path under pytest)

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
WORDS = ("the quick brown fox jumps over the lazy dog a paged cache holds keys in blocks of sixteen tokens "
         "continuous batching admits and retires requests every step hello world how are you today").split()
EOS = 1  # <|endoftext|>


def write_tokenizer(folder) -> None:
    """A small BPE (Metaspace, printable ASCII + newline) trained on WORDS, with ChatML special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=["\n", *map(chr, range(32, 127))], show_progress=False)
    tok.train_from_iterator([" ".join(WORDS)] * 4, trainer)
    assert tok.token_to_id("<|endoftext|>") == EOS
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"eos_token": "<|endoftext|>", "unk_token": "<unk>", "chat_template": CHATML}))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(base_url, app, reference model, tokenizer folder): uvicorn in a thread on a free 127.0.0.1 port."""
    import uvicorn

    from llmzoo.serve import app_for

    folder = tmp_path_factory.mktemp("serve") / "tiny-llama"
    save_tiny_checkpoint("llama", folder, overrides={"vocab_size": 200, "max_position_embeddings": 256,
                                                     "bos_token_id": EOS, "eos_token_id": EOS})
    write_tokenizer(folder)
    app = app_for(str(folder), model_name="tiny-llama", block_size=8, n_blocks=96, max_seqs=16,
                  max_batch_tokens=64)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(200):  # bounded: the server is up within seconds
        if srv.started:
            break
        time.sleep(0.05)
    assert srv.started
    ref = llmzoo.from_pretrained(str(folder)).eval()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1", app, ref, folder
    srv.should_exit = True
    thread.join(timeout=10)
    assert not thread.is_alive()


def client(url: str):
    return openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60)


def expected(ref, tokenizer, prompt_ids: list[int], max_tokens: int, stop: str | None) -> tuple[str, str]:
    """(text, finish_reason) from llmzoo.generate alone on the prompt, cut at the stop string."""
    out = llmzoo.generate(ref, torch.tensor([prompt_ids]), max_new_tokens=max_tokens, eos_token_id=EOS)
    ids = out[0, len(prompt_ids):].tolist()
    text = tokenizer.decode(ids, skip_special_tokens=True)
    if stop is not None and stop in text:
        return text[: text.index(stop)], "stop"
    return text, "stop" if ids[-1] == EOS else "length"


def blocks_free(app) -> bool:
    """Bounded wait for the engine to go idle with every block back in its pool."""
    engine = app.state.engine_thread.engine
    for _ in range(200):
        if not engine.has_work and engine.cache.blocks_in_use() == 0:
            return True
        time.sleep(0.05)
    return False


def test_sixteen_concurrent_requests_equal_generate(server):
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    url, app, ref, folder = server
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    hf_tok = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), chat_template=CHATML)
    cases = []
    for i in range(16):
        words = " ".join(WORDS[(3 * i) % 20 : (3 * i) % 20 + 1 + (5 * i) % 17])
        max_tokens = (4, 9, 17, 30)[i % 4]
        chat = i % 3 == 2
        if chat:
            messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": words}]
            ids = hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        else:
            ids = tok.encode(words).ids
        text, _ = expected(ref, tok, ids, max_tokens, None)
        stop = text[len(text) // 2 : len(text) // 2 + 2] if i % 4 == 1 and len(text) > 4 else None
        cases.append({"chat": chat, "stream": i % 2 == 0, "prompt": words if not chat else messages,
                      "max_tokens": max_tokens, "stop": stop, "expect": expected(ref, tok, ids, max_tokens, stop)})
    assert sum(c["expect"][1] == "stop" for c in cases) >= 3  # stop strings (and eos) really end some

    def call(case):
        c = client(url)
        kw = dict(model="tiny-llama", max_tokens=case["max_tokens"], temperature=0, stop=case["stop"],
                  stream=case["stream"])
        if case["chat"]:
            resp = c.chat.completions.create(messages=case["prompt"], **kw)
            if case["stream"]:
                parts, reason = [], None
                for chunk in resp:
                    parts.append(chunk.choices[0].delta.content or "")
                    reason = chunk.choices[0].finish_reason or reason
                return "".join(parts), reason
            return resp.choices[0].message.content, resp.choices[0].finish_reason
        resp = c.completions.create(prompt=case["prompt"], **kw)
        if case["stream"]:
            parts, reason = [], None
            for chunk in resp:
                parts.append(chunk.choices[0].text)
                reason = chunk.choices[0].finish_reason or reason
            return "".join(parts), reason
        return resp.choices[0].text, resp.choices[0].finish_reason

    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(call, cases))
    for case, g in zip(cases, got):
        assert g == case["expect"], case
    assert blocks_free(app)


def test_models_and_bad_requests(server):
    url, app, _, _ = server
    c = client(url)
    assert [m.id for m in c.models.list().data] == ["tiny-llama"]
    bad = [
        dict(max_tokens=0), dict(temperature=-1.0), dict(top_p=1.5), dict(n=2), dict(prompt="dog " * 300),
        dict(prompt=[]), dict(stop=[""]), dict(extra_body={"max_tokens": "many"}),
    ]
    for kw in bad:
        args = {"model": "tiny-llama", "prompt": "hello", **kw}
        with pytest.raises(openai.BadRequestError) as e:
            c.completions.create(**args)
        error = e.value.response.json()["error"]
        assert error["type"] == "invalid_request_error" and error["message"], kw
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model="tiny-llama", prompt="hello", max_tokens=0)
    assert e.value.response.json()["error"]["param"] == "max_tokens"
    with pytest.raises(openai.NotFoundError):
        c.completions.create(model="gpt-9", prompt="hello")
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model="tiny-llama", messages=[])
    r = httpx.post(f"{url}/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    assert httpx.get(f"{url}/nothing").json()["error"]["code"] == "not_found"
    assert blocks_free(app)


def test_disconnects_free_blocks_and_server_keeps_serving(server):
    url, app, _, _ = server
    engine = app.state.engine_thread.engine
    body = {"model": "tiny-llama", "prompt": "hello world", "max_tokens": 240, "temperature": 0, "ignore_eos": True}
    aborted = engine.stats["aborted"]
    with httpx.stream("POST", f"{url}/completions", json={**body, "stream": True}, timeout=30) as r:
        for line in r.iter_lines():  # one token arrived: the request holds blocks
            if line.startswith("data: "):
                break
    assert blocks_free(app) and engine.stats["aborted"] == aborted + 1
    # a non-streaming client that goes away mid-generation
    host, port = url.split("//")[1].split("/")[0].split(":")
    payload = json.dumps(body).encode()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     b"content-length: %d\r\n\r\n%s" % (len(payload), payload))
        for _ in range(2000):  # bounded: until the engine is generating it
            if any(r.output for r in engine.running):
                break
            time.sleep(0.001)
    assert blocks_free(app) and engine.stats["aborted"] == aborted + 2
    out = client(url).completions.create(model="tiny-llama", prompt="hello", max_tokens=3, temperature=0)
    assert out.usage.completion_tokens <= 3 and out.choices[0].finish_reason in ("stop", "length")
    assert blocks_free(app)


def test_cli_serve_verb():
    from llmzoo.cli import _parser, cmd_serve

    args = _parser().parse_args(["serve", "some/ckpt", "--port", "8123", "--max-seqs", "4"])
    assert args.func is cmd_serve and (args.host, args.port, args.max_seqs) == ("127.0.0.1", 8123, 4)
