"""Bad input gets an OpenAI-shaped 4xx, never a stack trace or a 500."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.gateway.support import Gateway, decisions, routed_config, running_gateway, wait_for

LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def gateway(upstream: str, router_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    workdir = tmp_path_factory.mktemp("bad-requests")
    experts = [{"name": "general", "model": "echo", "api_base": f"{upstream}/v1", "domains": ["other"]}]
    url = f"sqlite:///{workdir / 'decisions.db'}"
    with running_gateway(routed_config(experts, router_artifact), url, workdir, moe_max_body_bytes=LIMIT) as gw:
        yield gw


def assert_openai_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert "Traceback" not in error["message"]
    return error


def post(gateway: Gateway, **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{gateway.v1}/chat/completions", timeout=10, **kwargs)


GOOD = {"model": "moe-auto", "messages": [{"role": "user", "content": "hi"}]}


def test_invalid_json(gateway: Gateway) -> None:
    error = assert_openai_error(post(gateway, content=b'{"model": "moe-auto", "messages": [', headers={"content-type": "application/json"}), 400)
    assert error["type"] == "invalid_request_error" and "JSON" in error["message"]


def test_non_utf8_body(gateway: Gateway) -> None:
    assert_openai_error(post(gateway, content=b"\xff\xfe\x00garbage\xc3", headers={"content-type": "application/json"}), 400)


def chat_body(text: bytes, *, stream: bool) -> bytes:
    """A request whose one user message is `text`, exactly these bytes."""
    flag = b"true" if stream else b"false"
    return b'{"model": "moe-auto", "stream": %s, "messages": [{"role": "user", "content": "%s"}]}' % (flag, text)


# Well-formed JSON around text that is not UTF-8 (the case above starts like a UTF-16 BOM, which json
# decodes as UTF-16): a Latin-1 byte, an overlong encoding, a sequence cut short; plain and streamed.
@pytest.mark.parametrize("text", [b"caf\xe9", b"\xc0\xaf", b"\xe2\x82"], ids=["latin-1", "overlong", "truncated"])
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_invalid_utf8_inside_json_strings(gateway: Gateway, text: bytes, stream: bool) -> None:
    body = chat_body(text, stream=stream)
    assert_openai_error(post(gateway, content=body, headers={"content-type": "application/json"}), 400)


# A lone surrogate escape is valid JSON but no Unicode text: it has no UTF-8 form to send on.
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_lone_surrogate_escape_in_message_text(gateway: Gateway, stream: bool) -> None:
    body = chat_body(b"x \\ud800 y", stream=stream)
    error = assert_openai_error(post(gateway, content=body, headers={"content-type": "application/json"}), 400)
    assert "hex escape at line 1 column" in error["message"]  # the parser says where the text breaks off


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": GOOD["messages"]}, "model"),
        ({"model": "moe-auto"}, "messages"),
        ({"model": "moe-auto", "messages": []}, "messages"),
        ({**GOOD, "temperature": "hot"}, "temperature"),
        ({**GOOD, "temperature": 3}, "temperature"),
        ({**GOOD, "max_tokens": 0}, "max_tokens"),
        ({**GOOD, "stream": "yes please"}, "stream"),
        ({"model": "moe-auto", "messages": [{"role": "wizard", "content": "hi"}]}, "messages.0"),
        ({"model": "moe-auto", "messages": [{"role": "user"}]}, "messages.0.user.content"),
        ({"model": "moe-auto", "messages": [{"role": "tool", "content": "x"}]}, "messages.0.tool.tool_call_id"),
        ({"model": 42, "messages": GOOD["messages"]}, "model"),
    ],
)
def test_invalid_fields_name_the_param(gateway: Gateway, body: dict[str, Any], param: str) -> None:
    error = assert_openai_error(post(gateway, json=body), 400)
    assert error["param"] == param


def test_body_that_is_not_an_object(gateway: Gateway) -> None:
    assert_openai_error(post(gateway, json=["model", "moe-auto"]), 400)


def test_unknown_model(gateway: Gateway) -> None:
    error = assert_openai_error(post(gateway, json={**GOOD, "model": "nope"}), 404)
    assert error["code"] == "model_not_found"


def test_oversized_body_by_content_length(gateway: Gateway) -> None:
    big = {**GOOD, "messages": [{"role": "user", "content": "x" * (LIMIT + 10)}]}
    error = assert_openai_error(post(gateway, json=big), 413)
    assert error["code"] == "request_too_large"


def test_oversized_chunked_body(gateway: Gateway) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"model": "moe-auto", "messages": [{"role": "user", "content": "'
        for _ in range(LIMIT // 1024 + 2):
            yield b"y" * 1024
        yield b'"}]}'

    assert_openai_error(post(gateway, content=chunks(), headers={"content-type": "application/json"}), 413)


def test_unknown_route_and_wrong_method(gateway: Gateway) -> None:
    assert_openai_error(httpx.get(f"{gateway.v1}/nothing-here"), 404)
    assert_openai_error(httpx.get(f"{gateway.v1}/chat/completions"), 405)


def test_rejected_requests_make_no_record_and_good_ones_still_work(gateway: Gateway) -> None:
    url = gateway.settings.database_url
    before = len(decisions(url))
    assert_openai_error(post(gateway, json={"model": "moe-auto"}), 400)
    response = post(gateway, json=GOOD)
    assert response.status_code == 200 and response.json()["choices"][0]["message"]["content"] == "[echo] hi"
    wait_for(lambda: len(decisions(url)) == before + 1, what="exactly one new record")
    assert decisions(url)[-1].id == response.headers["x-moe-decision-id"]



@pytest.fixture(scope="module")
def roomy(upstream: str, router_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway with the default 4 MB body limit: bodies over 16 KB are read in its worker process."""
    workdir = tmp_path_factory.mktemp("bounds")
    experts = [{"name": "general", "model": "echo", "api_base": f"{upstream}/v1", "domains": ["other"]}]
    with running_gateway(routed_config(experts, router_artifact), f"sqlite:///{workdir / 'd.db'}", workdir) as gw:
        yield gw


MESSAGE = GOOD["messages"][0]


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def _tool(parameters: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": "f", "parameters": parameters}}


class Raw(str):
    """JSON text put in the body as it is: what json.dumps cannot write (1e400, NaN, a lone surrogate escape)."""


# (field, the value at its bound, one past it, the param the 400 names).
BOUNDS: list[tuple[str, Any, Any, str | None]] = [
    ("model", "moe-auto:" + "0" * 50, "moe-auto:" + "0" * 51, "model"),  # decisions.policy holds 50
    ("model", "moe-auto:0.3", "moe-auto:0.3" + " " * 300, "model"),
    ("model", "moe-auto:0.3", "moe-auto:nan", "model"),
    ("seed", 2**63 - 1, 2**63, "seed"),
    ("seed", 1, True, "seed"),
    ("seed", -(2**63), 10**4000 // 10**3900, "seed"),
    ("temperature", 2, True, "temperature"),
    ("n", 1, 1.0, "n"),
    ("max_tokens", 2**31 - 1, 2**31, "max_tokens"),
    ("stop", ["a"] * 4, ["a"] * 5, "stop"),
    ("stop", "\n", Raw('"\\ud800"'), None),  # the parser refuses it, saying where
    ("logit_bias", {str(i): 1 for i in range(300)}, {str(i): 1 for i in range(301)}, "logit_bias"),
    ("logit_bias", {"1": 100}, {"1": 101}, "logit_bias.1"),
    ("logit_bias", {"1": -100}, Raw('{"1": 1e400}'), "logit_bias.1"),  # parsed as infinity
    ("logit_bias", {"1": 0.5}, Raw('{"1": NaN}'), None),
    ("tools", [_tool({"type": "object"})] * 128, [_tool({"type": "object"})] * 129, "tools"),
    ("user", "u" * 256, "u" * 257, "user"),
    ("user", "u", Raw('"\\udc00"'), None),
    ("messages", [{**MESSAGE, "name": "n" * 64}], [{**MESSAGE, "name": "n" * 65}], "messages.0.user.name"),
    ("messages", [{"role": "user", "content": [{"type": "text", "text": "a"}] * 256}],
     [{"role": "user", "content": [{"type": "text", "text": "a"}] * 257}], "messages.0.user.content"),
    ("messages", [MESSAGE] * 4096, [MESSAGE] * 4097, "messages"),
    ("tools", [_tool(nested(60))], [_tool(nested(61))], "tools.0.function.parameters" + ".a" * 60),  # 64 levels
]


def _body(field: str, value: Any) -> bytes:
    if isinstance(value, Raw):
        return json.dumps({**GOOD, field: 0}).replace(f'"{field}": 0', f'"{field}": {value}').encode()
    return json.dumps({**GOOD, field: value}).encode()


@pytest.mark.parametrize(("field", "at", "past", "param"), BOUNDS, ids=[f"{b[0]}-{i}" for i, b in enumerate(BOUNDS)])
def test_each_field_is_answered_at_its_bound_and_refused_past_it(
    roomy: Gateway, field: str, at: Any, past: Any, param: str | None
) -> None:
    answered = httpx.post(f"{roomy.v1}/chat/completions", content=_body(field, at), timeout=30)
    assert answered.status_code == 200, answered.text
    refused = httpx.post(f"{roomy.v1}/chat/completions", content=_body(field, past), timeout=30)
    error = assert_openai_error(refused, 400)
    assert error["param"] == param, error


def test_a_large_body_is_read_off_the_event_loop_and_answered(roomy: Gateway) -> None:
    """Over 16 KB, the body is read in the worker process: the answer is the same as for a small one."""
    text = "a long document. " * 20_000
    response = httpx.post(f"{roomy.v1}/chat/completions", timeout=30,
                          json={**GOOD, "messages": [{"role": "user", "content": text}]})
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == f"[echo] {text}"
