"""experts/client.py: which upstream failures let the gateway fall back to the next-ranked expert."""

from __future__ import annotations

import litellm
import pytest
from litellm.exceptions import MidStreamFallbackError

from experts.client import ExpertFailure, classify, status_failure, with_system_prompt
from gateway.config import ExpertConfig


class StatusError(Exception):
    """What litellm raises for an HTTP error reply: an exception carrying the status code."""

    def __init__(self, status: int, message: str = "upstream said no") -> None:
        super().__init__(message)
        self.status_code = status


@pytest.mark.parametrize("status", [400, 401, 404, 413, 422, 429, 499])
def test_client_errors_go_back_to_the_client(status: int) -> None:
    failure = classify(StatusError(status))
    assert (failure.kind, failure.status, failure.can_fall_back) == ("upstream_4xx", status, False)
    assert str(failure) == "upstream said no"  # the upstream's words reach the client and the record


def test_an_upstream_408_falls_back() -> None:
    """408 Request Timeout is the server giving up on the request, not the request's fault."""
    failure = classify(StatusError(408))
    assert failure.can_fall_back and failure.kind != "upstream_4xx"
    assert failure.status is not None and failure.status >= 500


@pytest.mark.parametrize("status", [500, 502, 503, 504, 599])
def test_server_errors_fall_back_as_a_502(status: int) -> None:
    failure = classify(StatusError(status))
    assert (failure.kind, failure.status, failure.can_fall_back) == ("upstream_5xx", 502, True)
    assert str(failure) == "upstream said no"


@pytest.mark.parametrize("exc", [TimeoutError("slow"), TimeoutError(),
                                 litellm.Timeout("slow", model="m", llm_provider="hosted_vllm")])
def test_timeouts_fall_back_as_a_504(exc: BaseException) -> None:
    failure = classify(exc)
    assert (failure.kind, failure.status, failure.can_fall_back) == ("timeout", 504, True)
    assert str(failure) == str(exc).removeprefix("litellm.Timeout: ")  # litellm's class name left out


@pytest.mark.parametrize("message", ["Cannot connect to host 127.0.0.1:9", "[Errno 111] Connection refused",
                                     "httpx.ConnectError: boom", "All connection attempts failed"])
def test_refused_connections_fall_back(message: str) -> None:
    failure = classify(StatusError(500, message))
    assert (failure.kind, failure.status, failure.can_fall_back) == ("refused", 502, True)
    assert str(failure) == message


def test_a_broken_stream_and_an_unreadable_reply_fall_back() -> None:
    broken = classify(MidStreamFallbackError("cut", model="m", llm_provider="hosted_vllm", generated_content=""))
    assert (broken.kind, broken.status, broken.can_fall_back) == ("broken_stream", 502, True)
    assert "cut" in str(broken)
    for exc in (ValueError("not json"), StatusError("500")):  # type: ignore[arg-type]
        failure = classify(exc)
        assert (failure.kind, failure.status, failure.can_fall_back) == ("bad_response", 502, True)


def test_the_message_is_one_bounded_line_and_failures_pass_through() -> None:
    failure = classify(ValueError("line one\nline two" + "x" * 1000))
    assert failure.args[0].startswith("line one line two") and len(failure.args[0]) == 500
    already = ExpertFailure("upstream_4xx", "kept", 400)
    assert classify(already) is already


def test_a_status_that_is_no_error_is_an_unreadable_reply() -> None:
    """What a client calling the expert natively gets for, say, a redirect it did not follow."""
    failure = status_failure(302, "moved")
    assert (failure.kind, failure.status, str(failure), failure.can_fall_back) == ("bad_response", 502, "moved", True)


def expert(system_prompt: str | None) -> ExpertConfig:
    return ExpertConfig(name="stem", model="m", api_base="http://127.0.0.1:9/v1", system_prompt=system_prompt)


def test_the_experts_system_prompt_goes_first_merged_with_the_clients() -> None:
    user = {"role": "user", "content": "hi"}
    assert with_system_prompt(expert(None), [user]) == [user]
    assert with_system_prompt(expert("STEM"), [user]) == [{"role": "system", "content": "STEM"}, user]
    assert with_system_prompt(expert("STEM"), []) == [{"role": "system", "content": "STEM"}]
    for role in ("system", "developer"):
        merged = with_system_prompt(expert("STEM"), [{"role": role, "content": "be brief"}, user])
        assert merged == [{"role": "system", "content": "STEM\n\nbe brief"}, user]
    parts = {"role": "system", "content": [{"type": "text", "text": "be brief"}]}
    assert with_system_prompt(expert("STEM"), [parts, user]) == [{"role": "system", "content": "STEM"}, parts, user]


def test_the_message_is_the_providers_own_without_litellms_class_names() -> None:
    failure = classify(StatusError(401, 'litellm.AuthenticationError: AnthropicException - {"error": "bad key"}'))
    assert str(failure) == '{"error": "bad key"}'
