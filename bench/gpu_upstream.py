"""An OpenAI-compatible chat server that generates on a GPU: a transformers Llama model in SmolLM2-1.7B's shape.

The weights are RANDOM (no weights travel to the benchmark's GPU machine): every forward pass is real inference
of a 1.7B-parameter model in bf16, so the timings are those of serving such a model, but the text is gibberish
(each token is written ` t<id>`). The model is built from a LlamaConfig written here (`SHAPES`; `tiny` is for CPU
smoke runs), constructed directly on the device in its dtype (no copy from host memory) and seeded, so a run is
repeatable.

What it serves, as an OpenAI server does: `POST /v1/chat/completions` (plain, or streamed as SSE: a first chunk
with the role, one chunk per token as soon as it is made, a finish chunk, a usage chunk when
`stream_options.include_usage`, then `[DONE]`), `GET /v1/models` and `GET /health` (the device, the versions,
the shape and the requests in flight).

- Prompt: the messages' text, one token per whitespace-separated word (crc32 of the word modulo the vocabulary):
  about the count a real tokenizer gives for English prose, which is what prefill costs depend on.
- Generation: greedy, a KV-cache decode loop one token at a time, exactly `max_tokens` tokens (EOS is ignored:
  with random weights it would end answers at random), finish_reason "length".
- Concurrency: each request runs its decode loop in a worker thread (torch releases the GIL while it works),
  up to `--max-concurrent` at once, later ones wait for a thread. It does NOT batch across requests as vLLM
  does, so what many clients sustain here is this simple server's throughput, not the gateway's: the figure a
  benchmark takes from it is what a proxy in front ADDS. A streamed request whose client goes away stops at
  its next token.

    python -m bench.gpu_upstream --port 9200 [--device cuda] [--shape smollm2-1.7b]
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import threading
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
import transformers
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from transformers import LlamaConfig, LlamaForCausalLM

# SmolLM2-1.7B's architecture (HuggingFaceTB/SmolLM2-1.7B's config.json); RoPE keeps the config's default base,
# which changes no timing.
SHAPES: dict[str, dict[str, Any]] = {
    "smollm2-1.7b": {
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 24,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "vocab_size": 49152,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": True,
    },
    "tiny": {
        "hidden_size": 64,
        "intermediate_size": 256,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "vocab_size": 49152,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": True,
    },
}
MAX_TOKENS_LIMIT = 4096
DEFAULT_MAX_TOKENS = 16
SEED = 0
DONE = object()  # the worker's last item: the answer is complete


class Generator:
    """The model and its greedy decode loop; one instance serves every request, each in its own thread."""

    def __init__(self, shape: str, device: str) -> None:
        self.shape, self.device = shape, torch.device(device)
        # bf16 where it is fast (the GPU); a CPU smoke run computes in float32.
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.config = LlamaConfig(**SHAPES[shape])
        torch.manual_seed(SEED)
        default = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)
        try:
            with self.device:  # parameters are created (and randomly initialised) on the device itself
                self.model = LlamaForCausalLM(self.config).eval()
        finally:
            torch.set_default_dtype(default)
        self.parameters = sum(p.numel() for p in self.model.parameters())
        # transformers 5 renamed `past_key_values` to `cache` (the old name is deprecated, then removed).
        arguments = inspect.signature(self.model.forward).parameters
        self._cache_name = "cache" if "cache" in arguments else "past_key_values"
        self._last_logits = {"logits_to_keep": 1} if "logits_to_keep" in arguments else {}
        self.in_flight = 0
        self._lock = threading.Lock()

    def prompt_ids(self, messages: list[dict[str, Any]], max_tokens: int) -> list[int]:
        """One id per word of every message's text (see the module's docstring); its end when it is too long."""
        words = " ".join(_text(m.get("content")) for m in messages).split()
        ids = [zlib.crc32(word.encode()) % self.config.vocab_size for word in words] or [0]
        return ids[-(self.config.max_position_embeddings - max_tokens) :]

    def tokens(self, prompt: list[int], max_tokens: int, stop: threading.Event) -> Iterator[int]:
        """Greedy decode, one token per forward pass; each id is yielded as soon as it is on the host."""
        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor([prompt], device=self.device), use_cache=True, **self._last_logits)
            cache = out[self._cache_name]
            for made in range(1, max_tokens + 1):
                token = out.logits[0, -1].argmax()
                yield int(token)  # waits for the GPU: the token exists now
                if made == max_tokens or stop.is_set():
                    return
                out = self.model(
                    input_ids=token.view(1, 1), use_cache=True, **{self._cache_name: cache}, **self._last_logits
                )

    def run(self, prompt: list[int], max_tokens: int, emit: Callable[[object], None], stop: threading.Event) -> None:
        """A worker thread's job: every token to `emit`, then DONE (or the exception that ended it)."""
        try:
            for token in self.tokens(prompt, max_tokens, stop):
                emit(token)
            emit(DONE)
        except Exception as exc:  # handed to the request, which answers 500 or ends the stream
            emit(exc)
        finally:
            with self._lock:
                self.in_flight -= 1

    def accept(self) -> None:
        with self._lock:
            self.in_flight += 1

    def describe(self) -> dict[str, Any]:
        return {
            "weights": "random (seeded): real inference timings, gibberish text",
            "architecture": "LlamaForCausalLM",
            "shape": self.shape,
            "config": SHAPES[self.shape],
            "parameters": self.parameters,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device),
            "device_name": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu",
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "attention": getattr(self.model.config, "_attn_implementation", None),
        }


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def token_text(token: int) -> str:
    return f" t{token}"


def _error(message: str, status: int = 400) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": None}}, status_code=status)


def _validated(body: Any) -> tuple[str, list[dict[str, Any]], int] | str:
    """(model, messages, max_tokens), or what is wrong with the body."""
    if not isinstance(body, dict):
        return "the body must be a JSON object"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        return "messages must be a non-empty array of objects"
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens", DEFAULT_MAX_TOKENS))
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= MAX_TOKENS_LIMIT:
        return f"max_tokens must be an integer from 1 to {MAX_TOKENS_LIMIT}"
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return "model must be a non-empty string"
    return model, messages, max_tokens


def create_app(generator: Generator, max_concurrent: int) -> Starlette:
    workers = ThreadPoolExecutor(max_workers=max_concurrent, thread_name_prefix="decode")

    async def chat(request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            return _error("the body is not valid JSON")
        checked = _validated(body)
        if isinstance(checked, str):
            return _error(checked)
        model, messages, max_tokens = checked
        prompt = generator.prompt_ids(messages, max_tokens)
        loop = asyncio.get_running_loop()
        made: asyncio.Queue[object] = asyncio.Queue()
        stop = threading.Event()
        generator.accept()
        loop.run_in_executor(
            workers,
            generator.run,
            prompt,
            max_tokens,
            lambda item: loop.call_soon_threadsafe(made.put_nowait, item),
            stop,
        )

        async def token_ids() -> AsyncIterator[int]:
            try:
                while (item := await made.get()) is not DONE:
                    if isinstance(item, BaseException):
                        raise item
                    assert isinstance(item, int)
                    yield item
            finally:
                stop.set()  # the client went away (or the answer is complete): the worker stops at its next token

        created, ident = int(time.time()), f"chatcmpl-gpu-{time.monotonic_ns()}"
        usage = {
            "prompt_tokens": len(prompt),
            "completion_tokens": max_tokens,
            "total_tokens": len(prompt) + max_tokens,
        }
        if not body.get("stream"):
            try:
                text = "".join([token_text(t) async for t in token_ids()])
            except Exception as exc:
                return _error(f"generation failed: {exc}", 500)
            return JSONResponse(
                {
                    "id": ident,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}
                    ],
                    "usage": usage,
                }
            )

        def chunk(choices: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> bytes:
            data = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": choices,
                **(extra or {}),
            }
            return f"data: {json.dumps(data)}\n\n".encode()

        async def events() -> AsyncIterator[bytes]:
            yield chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
            async for token in token_ids():
                yield chunk([{"index": 0, "delta": {"content": token_text(token)}, "finish_reason": None}])
            yield chunk([{"index": 0, "delta": {}, "finish_reason": "length"}])
            if (body.get("stream_options") or {}).get("include_usage"):
                yield chunk([], {"usage": usage})
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def models(_: Request) -> Response:
        return JSONResponse(
            {"object": "list", "data": [{"id": f"{generator.shape}-random", "object": "model", "owned_by": "bench"}]}
        )

    async def health(_: Request) -> Response:
        return JSONResponse({"status": "ok", "in_flight": generator.in_flight, **generator.describe()})

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/models", models),
            Route("/health", health),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=9200)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="smollm2-1.7b")
    parser.add_argument("--max-concurrent", type=int, default=32, help="decode threads (later requests wait)")
    args = parser.parse_args()
    started = time.perf_counter()
    generator = Generator(args.shape, args.device)
    built = time.perf_counter()
    list(generator.tokens(generator.prompt_ids([{"content": "warm up the kernels"}], 8), 8, threading.Event()))
    where = generator.describe()["device_name"]
    print(
        f"{generator.shape}: {generator.parameters / 1e6:,.0f}M random parameters on {where} ({generator.dtype}), "
        f"built in {built - started:.1f} s, warmed up in {time.perf_counter() - built:.1f} s",
        flush=True,
    )
    uvicorn.run(
        create_app(generator, args.max_concurrent),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
