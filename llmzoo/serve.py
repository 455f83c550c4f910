"""`llmzoo serve`: an OpenAI-compatible HTTP server over the continuous-batching Engine.

Routes: GET /v1/models, POST /v1/completions, POST /v1/chat/completions (streaming as server-sent
events when "stream": true). One background thread owns the Engine and steps it while any request
is live; HTTP handlers hand it requests and read their tokens from an asyncio queue. A bad request
gets a 400 with OpenAI's error body; a client that goes away aborts its request, which frees its
blocks at the engine's next step. Chat prompts come from the checkpoint's `chat_template`
(tokenizer_config.json), rendered with jinja2's sandbox as transformers renders it.

Needs the `serve` extra (fastapi, uvicorn, jinja2, tokenizers), imported when an app is made.
"""

# no `from __future__ import annotations`: FastAPI reads the handlers' annotations as real types
import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .engine import Engine, Request, SamplingParams
from .errors import require
from .hf import from_pretrained
from .hf.loader import resolve_source
from .tokenizer import Tokenizer, _token_str


class BadRequest(ValueError):
    """A request the API refuses: becomes a 400 (or `status`) with an OpenAI-style error body."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = None):
        super().__init__(message)
        self.param, self.status, self.code = param, status, code


def error_body(message: str, param: str | None = None, code: str | None = None,
               kind: str = "invalid_request_error") -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


# ------------------------------------------------------------------------------ the engine thread


class EngineThread:
    """Runs `engine.step()` in one thread while requests are live; everything else talks to it through
    `submit` / `abort` (thread-safe). Tokens reach each request's asyncio queue as (token, finish_reason)."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._cv = threading.Condition()
        self._inbox: list[tuple[str, Any]] = []
        self._queues: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._stop = False
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="llmzoo-engine", daemon=True)
        self._thread.start()

    def submit(self, prompt: list[int], params: SamplingParams) -> tuple[Request, asyncio.Queue]:
        self.engine.check(prompt, params)  # read-only: raises ValueError before anything is queued
        req = Request(uuid.uuid4().hex, prompt, params)
        queue: asyncio.Queue = asyncio.Queue()
        with self._cv:
            self._queues[id(req)] = (asyncio.get_running_loop(), queue)
            self._inbox.append(("add", req))
            self._cv.notify()
        return req, queue

    def abort(self, req: Request) -> None:
        with self._cv:
            self._inbox.append(("abort", req))
            self._cv.notify()

    def close(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._thread.join(timeout=10)

    def _deliver(self, req: Request, item) -> None:
        target = self._queues.get(id(req))
        if target is not None:
            loop, queue = target
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop closed: nobody is listening any more
                pass

    def _loop(self) -> None:
        engine = self.engine
        while True:
            with self._cv:
                while not self._inbox and not engine.has_work and not self._stop:
                    self._cv.wait()
                if self._stop:
                    return
                inbox, self._inbox = self._inbox, []
            for op, req in inbox:
                if op == "add":
                    engine.enqueue(req)
                else:
                    engine.abort(req)
                    self._finished(req)
            try:
                events = engine.step()
            except BaseException as e:  # a broken step: fail every live request, keep serving
                self.error = e
                for req in [*engine.running, *engine.waiting]:
                    engine.abort(req)
                    self._deliver(req, (None, "error"))
                    self._finished(req)
                continue
            for req, token in events:
                self._deliver(req, (token, req.finish_reason))
                if req.finished:
                    self._finished(req)

    def _finished(self, req: Request) -> None:
        with self._cv:
            self._queues.pop(id(req), None)


# ------------------------------------------------------------------------------ chat template


def chat_template(folder: Path) -> Any | None:
    """The compiled chat template of a checkpoint folder, or None if tokenizer_config.json has none.
    Same sandbox, filters and globals transformers gives templates (they are untrusted code)."""
    path = folder / "tokenizer_config.json"
    cfg = json.loads(path.read_text()) if path.is_file() else {}
    source = cfg.get("chat_template")
    if source is None and (folder / "chat_template.jinja").is_file():
        source = (folder / "chat_template.jinja").read_text()
    if isinstance(source, list):  # [{"name": "default", "template": ...}, ...]
        source = next((t["template"] for t in source if t.get("name") == "default"), None)
    if source is None:
        return None
    jinja2 = require("jinja2", "serve", "a chat template")
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: time.strftime(fmt)
    template = env.from_string(source)
    specials = {k: _token_str(cfg.get(k)) for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
    return lambda messages: template.render(messages=messages, add_generation_prompt=True,
                                            **{k: v for k, v in specials.items() if v is not None})


# ------------------------------------------------------------------------------ requests → engine


@dataclass
class Job:
    """One choice being generated: its engine request, token queue and stop strings."""

    req: Request
    queue: asyncio.Queue
    stop: list[str]


def _check_type(body: dict, key: str, types, default=None):
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise BadRequest(f"'{key}' must be {getattr(types, '__name__', types)}, got a boolean", key)
    if not isinstance(value, types):
        names = types.__name__ if isinstance(types, type) else " or ".join(t.__name__ for t in types)
        raise BadRequest(f"'{key}' must be {names}, got {type(value).__name__}", key)
    return value


def sampling_params(body: dict, token_key: str = "max_tokens") -> tuple[SamplingParams, list[str]]:
    """OpenAI request fields → SamplingParams and stop strings. Unsupported settings are refused."""
    max_tokens = _check_type(body, token_key, int, None)
    if token_key == "max_completion_tokens" or max_tokens is None:
        max_tokens = _check_type(body, "max_completion_tokens", int, max_tokens)
    n = _check_type(body, "n", int, 1)
    if n != 1:
        raise BadRequest("only n=1 is supported", "n")
    for key in ("presence_penalty", "frequency_penalty"):
        if _check_type(body, key, (int, float), 0) != 0:
            raise BadRequest(f"'{key}' is not supported (use repetition_penalty)", key)
    if body.get("logprobs") not in (None, False, 0):
        raise BadRequest("'logprobs' is not supported", "logprobs")
    stop = body.get("stop")
    stop = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop) or len(stop) > 4:
        raise BadRequest("'stop' must be a non-empty string or a list of up to 4 of them", "stop")
    try:
        params = SamplingParams(
            max_tokens=16 if max_tokens is None else max_tokens,
            temperature=float(_check_type(body, "temperature", (int, float), 1.0)),
            top_p=_check_type(body, "top_p", (int, float), None),
            top_k=_check_type(body, "top_k", int, None),
            repetition_penalty=_check_type(body, "repetition_penalty", (int, float), None),
            seed=_check_type(body, "seed", int, None),
            ignore_eos=bool(_check_type(body, "ignore_eos", bool, False)),
        )
    except ValueError as e:  # SamplingParams' messages start with the field's name
        raise BadRequest(str(e), str(e).split()[0]) from None
    return params, stop


class StopText:
    """Detokenised output with stop strings: `push(token)` → (new text safe to show, hit a stop?).
    Text that could be the start of a stop string is held back until it cannot be."""

    def __init__(self, tokenizer, stop: list[str]):
        self.tokenizer, self.stop, self.ids, self.text, self.shown = tokenizer, stop, [], "", 0

    def push(self, token: int | None) -> tuple[str, bool]:
        if token is not None:
            self.ids.append(token)
            text = self.tokenizer.decode(self.ids)
            if not text.endswith("\ufffd"):  # a byte-level piece waits for its last byte
                self.text = text
        hits = [i for i in (self.text.find(s) for s in self.stop) if i >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            new, self.shown = self.text[self.shown :], len(self.text)
            return new, True
        hold = max((k for s in self.stop for k in range(1, len(s)) if self.text.endswith(s[:k])), default=0)
        safe = len(self.text) - hold
        new, self.shown = self.text[self.shown : safe], max(self.shown, safe)
        return new, False

    def flush(self) -> str:
        """At the end: the whole decoded output (a trailing partial character included), unshown part."""
        if self.ids:
            self.text = self.tokenizer.decode(self.ids)
        new, self.shown = self.text[self.shown :], len(self.text)
        return new


# ------------------------------------------------------------------------------ the app


def create_app(engine: Engine, tokenizer, model_name: str, template=None):
    """The ASGI app serving `engine` under `model_name`. app.state.engine_thread owns the engine."""
    require("fastapi", "serve", "llmzoo serve")
    from fastapi import FastAPI, Request as HTTPRequest
    from fastapi.responses import JSONResponse, StreamingResponse

    runner = EngineThread(engine)
    app = FastAPI(title="llmzoo", docs_url=None, redoc_url=None)
    app.state.engine_thread = runner
    app.router.add_event_handler("shutdown", runner.close)
    created = int(time.time())

    @app.exception_handler(BadRequest)
    async def _bad(_, e: BadRequest):
        return JSONResponse(error_body(str(e), e.param, e.code), status_code=e.status)

    @app.exception_handler(404)
    async def _missing(request, _):
        return JSONResponse(error_body(f"no route {request.method} {request.url.path}", code="not_found"), 404)

    @app.exception_handler(405)
    async def _method(request, _):
        return JSONResponse(error_body(f"{request.method} is not allowed on {request.url.path}"), 405)

    async def json_body(request: HTTPRequest) -> dict:
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BadRequest(f"the body is not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object")
        model = body.get("model")
        if not isinstance(model, str):
            raise BadRequest("'model' is required (a string)", "model")
        if model != model_name:
            raise BadRequest(f"the model '{model}' does not exist; this server has '{model_name}'", "model",
                             status=404, code="model_not_found")
        return body

    def start(prompt: list[int], params: SamplingParams, stop: list[str]) -> Job:
        try:
            req, queue = runner.submit(prompt, params)
        except ValueError as e:
            raise BadRequest(str(e), "prompt") from None
        return Job(req, queue, stop)

    async def events(job: Job, request: HTTPRequest) -> AsyncIterator[tuple[str, str | None, int, str]]:
        """(new text, finish_reason or None, tokens so far, whole text so far) per token; aborts the request
        when the client disconnects, a stop string shows up, or the consumer stops early."""
        text = StopText(tokenizer, job.stop)
        n, done, checked = 0, False, time.monotonic()
        try:
            while not done:
                try:
                    token, reason = await asyncio.wait_for(job.queue.get(), timeout=0.1)
                except asyncio.TimeoutError:
                    token = reason = None
                if time.monotonic() - checked > 0.1:  # tokens may never pause: look on a clock
                    if await request.is_disconnected():
                        return
                    checked = time.monotonic()
                if token is None and reason is None:
                    continue
                if token is not None:
                    n += 1
                new, hit = text.push(token)
                if hit:
                    reason = "stop"
                if reason == "error":
                    raise RuntimeError(f"the engine failed: {runner.error!r}")
                done = reason is not None
                if done and not hit:
                    new += text.flush()
                yield new, reason, n, text.text
        finally:
            if not job.req.finished or not done:
                runner.abort(job.req)

    def usage(prompt: int, completion: int) -> dict:
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def sse(obj) -> str:
        return f"data: {json.dumps(obj)}\n\n"

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "llmzoo"}]}

    def prompts_of(value) -> list[list[int]]:
        """OpenAI's four prompt forms: a string, strings, token ids, lists of token ids."""
        if isinstance(value, str):
            return [tokenizer.encode(value)]
        if isinstance(value, list) and value and all(isinstance(p, str) for p in value):
            return [tokenizer.encode(p) for p in value]
        if isinstance(value, list) and value and all(isinstance(t, int) and not isinstance(t, bool) for t in value):
            return [value]
        if isinstance(value, list) and value and all(
                isinstance(p, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in p) for p in value):
            return value
        raise BadRequest("'prompt' must be a string, a list of strings, or token ids", "prompt")

    @app.post("/v1/completions")
    async def completions(request: HTTPRequest):
        body = await json_body(request)
        params, stop = sampling_params(body)
        prompts = prompts_of(body.get("prompt"))
        if body.get("echo"):
            raise BadRequest("'echo' is not supported", "echo")
        stream = bool(_check_type(body, "stream", bool, False))
        if stream and len(prompts) > 1:
            raise BadRequest("streaming takes one prompt", "prompt")
        for p in prompts:  # all or none: no prompt starts if another is refused
            try:
                engine.check(p, params)
            except ValueError as e:
                raise BadRequest(str(e), "prompt") from None
        jobs = [start(p, params, stop) for p in prompts]
        cid, now = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": cid, "object": "text_completion", "created": now, "model": model_name}
        if stream:
            async def chunks():
                async for new, reason, _, _ in events(jobs[0], request):
                    if new or reason:
                        yield sse({**head, "choices": [{"index": 0, "text": new, "logprobs": None,
                                                        "finish_reason": reason}]})
                yield "data: [DONE]\n\n"

            return StreamingResponse(chunks(), media_type="text/event-stream")
        choices, completion = [], 0
        for i, job in enumerate(jobs):
            text, reason, n = "", None, 0
            async for _, reason, n, text in events(job, request):
                pass
            if reason is None:  # the client went away
                return JSONResponse(error_body("client disconnected"), status_code=499)
            completion += n
            choices.append({"index": i, "text": text, "logprobs": None, "finish_reason": reason})
        return {**head, "choices": choices, "usage": usage(sum(map(len, prompts)), completion)}

    def chat_prompt(body: dict) -> list[int]:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
            raise BadRequest("'messages' must be a non-empty list of {role, content} objects", "messages")
        for m in messages:
            content = m.get("content")
            if isinstance(content, list):  # content parts: text only
                if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                    raise BadRequest("only text content parts are supported", "messages")
                m["content"] = "".join(p.get("text", "") for p in content)
            elif not isinstance(content, str):
                raise BadRequest("each message needs a string 'content'", "messages")
        if template is None:
            raise BadRequest("this checkpoint has no chat_template in tokenizer_config.json; use /v1/completions",
                             "messages")
        try:
            text = template(messages)
        except Exception as e:  # a template's raise_exception: the conversation does not fit it
            raise BadRequest(f"chat template: {e}", "messages") from None
        return tokenizer.encode(text, add_special_tokens=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: HTTPRequest):
        body = await json_body(request)
        params, stop = sampling_params(body)
        prompt = chat_prompt(body)
        if body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
            params.max_tokens = max(1, engine.max_len - len(prompt))  # chat default: up to the context's end
        stream = bool(_check_type(body, "stream", bool, False))
        job = start(prompt, params, stop)
        cid, now = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": cid, "created": now, "model": model_name}
        if stream:
            async def chunks():
                chunk = {**head, "object": "chat.completion.chunk"}
                yield sse({**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                 "finish_reason": None}]})
                async for new, reason, _, _ in events(job, request):
                    if new:
                        yield sse({**chunk, "choices": [{"index": 0, "delta": {"content": new},
                                                         "finish_reason": None}]})
                    if reason:
                        yield sse({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": reason}]})
                yield "data: [DONE]\n\n"

            return StreamingResponse(chunks(), media_type="text/event-stream")
        text, reason, n = "", None, 0
        async for _, reason, n, text in events(job, request):
            pass
        if reason is None:
            return JSONResponse(error_body("client disconnected"), status_code=499)
        return {**head, "object": "chat.completion", "usage": usage(len(prompt), n),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": reason}]}

    return app


class ServeTokenizer:
    """What the server needs from llmzoo.tokenizer.Tokenizer: encode (optionally without the
    post-processor's special tokens, as a rendered chat template already has them) and decode."""

    def __init__(self, tokenizer):
        self.inner = tokenizer
        self.eos_token_ids = tokenizer.eos_token_ids

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.inner.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int]) -> str:
        return self.inner.decode(ids)


def app_for(source: str, *, model_name: str | None = None, dtype: str | None = None, device: str = "cpu",
            **engine_kw):
    """Load a checkpoint (folder or hub id) with its tokenizer and chat template; return the app."""
    folder, _ = resolve_source(source)
    tokenizer = Tokenizer(folder)
    model = from_pretrained(source, dtype=dtype, device=device).eval()
    engine = Engine(model, eos_token_ids=tokenizer.eos_token_ids, **engine_kw)
    return create_app(engine, ServeTokenizer(tokenizer), model_name or str(source), chat_template(folder))


def serve(source: str, host: str = "127.0.0.1", port: int = 8000, **kw) -> None:
    """Run the server until interrupted (uvicorn, one process)."""
    uvicorn = require("uvicorn", "serve", "llmzoo serve")
    uvicorn.run(app_for(source, **kw), host=host, port=port, log_level="info")
