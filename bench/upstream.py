"""A scripted OpenAI-compatible upstream for failure injection and overhead benchmarks (never a user's default).

Behaviour is chosen by the requested model name, so one server can play a healthy expert and a
broken one at once: names containing `fail500` answer 500, `reject400` answer 400, `slow` wait 5 s
before answering, `drip` stream one word every 0.3 s, `broken` cut the stream (or the body)
midway; anything else echoes the last user message. Like a real server it stops at `max_tokens` (a
word is a token here; finish_reason "length") and before the first `stop` string it meets (named in the
choice's `stop_reason`, as vLLM does). Given `tools` (and a `tool_choice` other than "none") while the
conversation ends with a user message, it calls the first tool (or the one `tool_choice` names) with
`{"query": <the user's text>}`, finish_reason "tool_calls", the arguments streamed in two pieces; once the
conversation ends with the tool's result, it answers "[model] tool said: <result>". `RECEIVED` counts the requests per model name, so a
test can tell which experts were called (and which never were).

`POST /v1/messages` plays Anthropic's Messages API (the key it wants is ANTHROPIC_KEY): a provider that
does not speak OpenAI's, for experts called through litellm.

Run alone for the benchmark: `python -m bench.upstream --port 9100`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

SLOW_S = 5.0
DRIP_S = 0.3
RECEIVED: Counter[str] = Counter()  # per model name: bounded by the names, not by the requests of a benchmark


def _reply_text(body: dict) -> str:
    user = next((m for m in reversed(body["messages"]) if m["role"] == "user"), {"content": ""})
    content = user["content"] if isinstance(user["content"], str) else " ".join(
        p.get("text", "") for p in user["content"]
    )
    system = next((m["content"] for m in body["messages"] if m["role"] == "system"), None)
    prefix = f"[{body['model']}|{system}]" if system else f"[{body['model']}]"
    return f"{prefix} {content}"


def _tool_call(body: dict) -> dict | None:
    """The call the script makes, if the request offers tools and awaits a call (see the module's docstring)."""
    tools, choice = body.get("tools"), body.get("tool_choice")
    if not tools or choice == "none" or body["messages"][-1]["role"] != "user":
        return None
    name = choice["function"]["name"] if isinstance(choice, dict) else tools[0]["function"]["name"]
    query = _reply_text({"model": "", "messages": [body["messages"][-1]]}).split(" ", 1)[1]
    return {"id": f"call_{len(body['messages'])}", "type": "function",
            "function": {"name": name, "arguments": json.dumps({"query": query})}}


def _text_content(content: str | list | None) -> str:
    return content if isinstance(content, str) else " ".join(p.get("text", "") for p in content or [])


def _usage(body: dict, text: str) -> dict:
    prompt = sum(len(str(m.get("content", "")).split()) for m in body["messages"])
    completion = len(text.split())
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def chat(request: Request) -> Response:
    body = await request.json()
    model = body["model"]
    RECEIVED[model] += 1
    if "fail500" in model:
        return JSONResponse({"error": {"message": "upstream exploded", "type": "server_error"}}, status_code=500)
    if "reject400" in model:
        return JSONResponse({"error": {"message": "prompt too long", "type": "invalid_request_error"}}, status_code=400)
    if "slow" in model:
        await asyncio.sleep(SLOW_S)
    call = _tool_call(body)
    if call is not None:
        return _tool_call_reply(body, call)
    last = body["messages"][-1]
    text = f"[{model}] tool said: {_text_content(last['content'])}" if last["role"] == "tool" else _reply_text(body)
    limit = body.get("max_tokens")
    finish = "length" if limit is not None and len(text.split()) > limit else "stop"
    if finish == "length":
        text = " ".join(text.split()[:limit])
    # Like vLLM: the answer ends before the first stop string it meets, named in the choice's `stop_reason`.
    stops = [body["stop"]] if isinstance(body.get("stop"), str) else body.get("stop") or []
    met = min((s for s in stops if s in text), key=text.index, default=None)
    if met is not None:
        text, finish = text[: text.index(met)], "stop"
    created = int(time.time())
    if not body.get("stream"):
        payload = {
            "id": "chatcmpl-upstream",
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish,
                         "stop_reason": met}],
            "usage": _usage(body, text),
        }
        if "broken" in model:
            return Response(json.dumps(payload)[:40], media_type="application/json")
        return JSONResponse(payload)

    async def events() -> AsyncIterator[bytes]:
        def chunk(delta: dict, finish: str | None = None, usage: dict | None = None) -> bytes:
            data = {
                "id": "chatcmpl-upstream",
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish,
                             **({"stop_reason": met} if finish else {})}] if usage is None else [],
            }
            if usage is not None:
                data["usage"] = usage
            return f"data: {json.dumps(data)}\n\n".encode()

        yield chunk({"role": "assistant", "content": ""})
        words = text.split(" ")
        for i, word in enumerate(words):
            if "broken" in model and i == 2:
                raise ConnectionResetError("stream cut by the scripted upstream")
            if "drip" in model:
                await asyncio.sleep(DRIP_S)
            yield chunk({"content": word if i == 0 else " " + word})
        yield chunk({}, finish)
        if (body.get("stream_options") or {}).get("include_usage"):
            yield chunk({}, usage=_usage(body, text))
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


def _tool_call_reply(body: dict, call: dict) -> Response:
    model, created = body["model"], int(time.time())
    usage = _usage(body, call["function"]["arguments"])
    if not body.get("stream"):
        message = {"role": "assistant", "content": None, "tool_calls": [call]}
        return JSONResponse({"id": "chatcmpl-upstream", "object": "chat.completion", "created": created, "model": model,
                             "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}],
                             "usage": usage})
    arguments = call["function"]["arguments"]
    half = len(arguments) // 2
    deltas = [
        {"role": "assistant", "content": None, "tool_calls": [
            {"index": 0, "id": call["id"], "type": "function", "function": {"name": call["function"]["name"],
                                                                              "arguments": arguments[:half]}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": arguments[half:]}}]},
    ]

    async def events() -> AsyncIterator[bytes]:
        def chunk(choices: list, extra: dict | None = None) -> bytes:
            data = {"id": "chatcmpl-upstream", "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": choices, **(extra or {})}
            return f"data: {json.dumps(data)}\n\n".encode()

        for delta in deltas:
            yield chunk([{"index": 0, "delta": delta, "finish_reason": None}])
        yield chunk([{"index": 0, "delta": {}, "finish_reason": "tool_calls"}])
        if (body.get("stream_options") or {}).get("include_usage"):
            yield chunk([], {"usage": usage})
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


async def models(_: Request) -> Response:
    return JSONResponse({"object": "list", "data": [{"id": "echo", "object": "model", "owned_by": "tests"}]})


ANTHROPIC_KEY = "sk-ant-scripted"  # the x-api-key the Messages endpoint wants


async def messages(request: Request) -> Response:
    """Anthropic's Messages API, for experts called through litellm: a provider that does not speak OpenAI's."""
    if request.headers.get("x-api-key") != ANTHROPIC_KEY:
        return JSONResponse({"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}},
                            status_code=401)
    body = await request.json()
    model = body["model"]
    RECEIVED[model] += 1
    user = next(m for m in reversed(body["messages"]) if m["role"] == "user")
    content = user["content"] if isinstance(user["content"], str) else " ".join(
        block.get("text", "") for block in user["content"])
    text = f"[anthropic:{model}] {content}"
    usage = {"input_tokens": len(content.split()), "output_tokens": len(text.split())}
    message = {"id": "msg_scripted", "type": "message", "role": "assistant", "model": model,
               "stop_reason": "end_turn", "stop_sequence": None}
    if not body.get("stream"):
        return JSONResponse({**message, "content": [{"type": "text", "text": text}], "usage": usage})

    async def events() -> AsyncIterator[bytes]:
        def event(kind: str, data: dict) -> bytes:
            return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()

        yield event("message_start", {"message": {**message, "content": [], "stop_reason": None,
                                                   "usage": {"input_tokens": usage["input_tokens"], "output_tokens": 0}}})
        yield event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
        for i, word in enumerate(text.split(" ")):
            yield event("content_block_delta", {"index": 0, "delta": {"type": "text_delta",
                                                                       "text": word if i == 0 else " " + word}})
        yield event("content_block_stop", {"index": 0})
        yield event("message_delta", {"delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                      "usage": {"output_tokens": usage["output_tokens"]}})
        yield event("message_stop", {})

    return StreamingResponse(events(), media_type="text/event-stream")


app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]), Route("/v1/models", models),
                        Route("/v1/messages", messages, methods=["POST"])])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serve_in_thread(asgi_app: object = app, port: int | None = None) -> Iterator[str]:
    """Run an ASGI app on loopback in a background thread; yields its base URL."""
    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(asgi_app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    # Generous: a gateway loads its routers (torch, the encoder) before it starts listening.
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("server did not start (its startup failed: see the log above)")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=9100)
    args = parser.parse_args()
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)
