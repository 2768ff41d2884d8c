"""Messages answered whole, streamed and with tools, through the anthropic SDK and LangChain's ChatAnthropic."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx
import pytest

from tests.gateway.messages.support import CAPITAL, CLOCK, LOOKUP, metric, served
from tests.gateway.support import HISTORY_QUESTION, MATH_QUESTION, Gateway, decisions, wait_for


# -- plain ---------------------------------------------------------------------------------------------------
def test_create_is_routed_recorded_and_answered_as_a_message(
    client: anthropic.Anthropic, gateway: Gateway, sqlite_url: str
) -> None:
    raw = client.messages.with_raw_response.create(
        model="moe-auto",
        max_tokens=64,
        messages=[{"role": "user", "content": MATH_QUESTION}],
    )
    message = raw.parse()
    assert raw.headers["x-moe-expert"] == "stem"
    assert raw.headers["x-moe-router"].startswith("embedding-domain@")
    assert message.id == f"msg_{raw.headers['x-moe-decision-id']}"
    assert message.type == "message" and message.role == "assistant" and message.model == "stem"
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == f"[echo-stem|STEM] {MATH_QUESTION}"  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert message.usage.input_tokens > 0 and message.usage.output_tokens == len(message.content[0].text.split())  # type: ignore[union-attr]

    wait_for(lambda: len(decisions(sqlite_url)) == 1, what="the decision record")
    [record] = decisions(sqlite_url)
    assert record.id == raw.headers["x-moe-decision-id"]
    assert record.virtual_model == "moe-auto" and record.router == "embedding-domain"
    assert record.chosen_expert == "stem" and record.status == "ok" and record.http_status == 200
    assert not record.stream and len(record.ranked) == 3
    assert (record.prompt_tokens, record.completion_tokens) == (message.usage.input_tokens, message.usage.output_tokens)
    assert metric(gateway, "llm_model_requests_total", virtual_model="moe-auto", expert="stem", status="ok") == 1


def test_system_blocks_sampling_and_metadata_reach_the_expert(client: anthropic.Anthropic, sqlite_url: str) -> None:
    message = client.messages.create(
        model="moe-auto",
        max_tokens=64,
        system="be brief",
        messages=[{"role": "user", "content": [{"type": "text", "text": HISTORY_QUESTION}]}],
        stop_sequences=["\n\n"],
        metadata={"user_id": "alice"},
        # Sampling as Anthropic's API still takes it (this SDK's release has dropped the parameters).
        extra_body={"temperature": 0.5, "top_p": 0.9, "top_k": 40},
    )
    assert message.model == "humanities"
    assert message.content[0].text == f"[echo-humanities|be brief] {HISTORY_QUESTION}"  # type: ignore[union-attr]
    wait_for(lambda: len(decisions(sqlite_url)) == 1, what="the decision record")


def test_max_tokens_is_the_stop_reason_when_reached(client: anthropic.Anthropic) -> None:
    message = client.messages.create(
        model="moe-auto", max_tokens=3, messages=[{"role": "user", "content": MATH_QUESTION}]
    )
    assert message.stop_reason == "max_tokens"
    assert message.content[0].text == "[echo-stem|STEM] Solve for"  # type: ignore[union-attr]


def test_a_met_stop_sequence_is_named(client: anthropic.Anthropic) -> None:
    """The expert names the stop string it met (vLLM's `stop_reason`), whole and streamed."""
    message = client.messages.create(
        model="moe-auto",
        max_tokens=50,
        stop_sequences=["never", "+ 7"],
        messages=[{"role": "user", "content": MATH_QUESTION}],
    )
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "+ 7")
    assert message.content[0].text == "[echo-stem|STEM] Solve for x: 3x "  # type: ignore[union-attr]
    with client.messages.stream(
        model="moe-auto", max_tokens=50, stop_sequences=["+ 7"], messages=[{"role": "user", "content": MATH_QUESTION}]
    ) as stream:
        final = stream.get_final_message()
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", "+ 7")


def test_a_conversation_with_an_image_is_answered(client: anthropic.Anthropic) -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    message = client.messages.create(
        model="moe-auto",
        max_tokens=64,
        messages=[
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Hi! What do you need?"},
            {
                "role": "user",
                "content": [
                    image,
                    {"type": "image", "source": {"type": "url", "url": "https://x.test/a.png"}},
                    {"type": "text", "text": MATH_QUESTION},
                ],
            },
        ],
    )
    assert message.content[0].text.endswith(MATH_QUESTION)  # type: ignore[union-attr]


def test_unknown_fields_and_any_anthropic_version_are_accepted(gateway: Gateway) -> None:
    response = httpx.post(
        f"{gateway.v1}/messages",
        timeout=30,
        headers={"anthropic-version": "1999-01-01", "anthropic-beta": "no-such-beta", "x-api-key": "unused"},
        json={
            "model": "moe-auto",
            "max_tokens": 16,
            "messages": [{"role": "user", "content": "hi"}],
            "service_tier": "auto",
            "some_future_field": {"x": 1},
            "thinking": {"type": "disabled"},
        },
    )
    assert response.status_code == 200, response.text
    assert response.json()["type"] == "message"


# -- streamed ------------------------------------------------------------------------------------------------
def test_stream_events_in_anthropics_order(client: anthropic.Anthropic, gateway: Gateway, sqlite_url: str) -> None:
    with client.messages.with_streaming_response.create(
        model="moe-auto",
        max_tokens=64,
        messages=[{"role": "user", "content": HISTORY_QUESTION}],
        stream=True,
    ) as response:
        assert response.headers["x-moe-expert"] == "humanities"
        assert response.headers["content-type"].startswith("text/event-stream")
        events = list(response.parse())
    kinds = [event.type for event in events]
    assert kinds[:2] == ["message_start", "content_block_start"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(kinds[2:-3]) == {"content_block_delta"}
    start, delta = events[0], events[-2]
    assert start.message.id == f"msg_{response.headers['x-moe-decision-id']}"  # type: ignore[union-attr]
    assert start.message.model == "humanities" and start.message.content == []  # type: ignore[union-attr]
    text = "".join(event.delta.text for event in events[2:-3])  # type: ignore[union-attr]
    assert text == f"[echo-humanities] {HISTORY_QUESTION}"
    assert delta.delta.stop_reason == "end_turn"  # type: ignore[union-attr]
    assert delta.usage.output_tokens == len(text.split()) and delta.usage.input_tokens  # type: ignore[union-attr]

    wait_for(lambda: len(decisions(sqlite_url)) == 1, what="the decision record")
    [record] = decisions(sqlite_url)
    assert record.stream and record.status == "ok" and record.chosen_expert == "humanities"
    assert record.ttft_ms is not None and record.completion_tokens == delta.usage.output_tokens  # type: ignore[union-attr]
    assert metric(gateway, "llm_model_requests_total", virtual_model="moe-auto", expert="humanities", status="ok") == 1


def test_stream_helper_builds_the_final_message(client: anthropic.Anthropic) -> None:
    with client.messages.stream(
        model="moe-auto", max_tokens=64, messages=[{"role": "user", "content": MATH_QUESTION}]
    ) as stream:
        assert "".join(stream.text_stream) == f"[echo-stem|STEM] {MATH_QUESTION}"
        final = stream.get_final_message()
    assert final.model == "stem" and final.stop_reason == "end_turn"
    assert final.content[0].text == f"[echo-stem|STEM] {MATH_QUESTION}"  # type: ignore[union-attr]
    assert final.usage.input_tokens > 0 and final.usage.output_tokens > 0


async def test_async_client_create_and_stream(gateway: Gateway) -> None:
    client = anthropic.AsyncAnthropic(base_url=gateway.base_url, api_key="unused", max_retries=0)
    message = await client.messages.create(
        model="moe-auto", max_tokens=64, messages=[{"role": "user", "content": MATH_QUESTION}]
    )
    assert message.content[0].text == f"[echo-stem|STEM] {MATH_QUESTION}"  # type: ignore[union-attr]
    async with client.messages.stream(
        model="moe-auto", max_tokens=64, messages=[{"role": "user", "content": MATH_QUESTION}]
    ) as stream:
        final = await stream.get_final_message()
    assert final.content[0].text == f"[echo-stem|STEM] {MATH_QUESTION}"  # type: ignore[union-attr]
    await client.close()


# -- tools: call, result, answer -------------------------------------------------------------------------------
def _call_then_answer(
    client: anthropic.Anthropic, *, streamed: bool, result: dict[str, Any], **extra: Any
) -> tuple[anthropic.types.Message, anthropic.types.Message]:
    def ask(messages: list[dict[str, Any]]) -> anthropic.types.Message:
        params: dict[str, Any] = {
            "model": "moe-auto",
            "max_tokens": 64,
            "tools": [LOOKUP, CLOCK],
            "messages": messages,
            **extra,
        }
        if not streamed:
            return client.messages.create(**params)
        with client.messages.stream(**params) as stream:
            return stream.get_final_message()

    question = {"role": "user", "content": CAPITAL}
    call = ask([question])
    tool_use = call.content[-1]
    assert tool_use.type == "tool_use"
    answer = ask(
        [
            question,
            {"role": "assistant", "content": call.content},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use.id, **result}]},
        ]
    )
    return call, answer


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
def test_tool_call_result_and_answer(client: anthropic.Anthropic, sqlite_url: str, streamed: bool) -> None:
    call, answer = _call_then_answer(client, streamed=streamed, result={"content": "Paris"})
    assert call.stop_reason == "tool_use"
    [tool_use] = call.content
    assert tool_use.type == "tool_use" and tool_use.name == "lookup"
    assert tool_use.input == {"query": CAPITAL}  # the arguments streamed in two pieces, whole again
    assert tool_use.id.startswith("call_")
    assert answer.stop_reason == "end_turn"
    assert answer.content[0].text == f"[{served(answer.model)}] tool said: Paris"  # type: ignore[union-attr]

    wait_for(lambda: len(decisions(sqlite_url)) == 2, what="both records")
    records = decisions(sqlite_url)
    assert [r.status for r in records] == ["ok", "ok"] and all(r.stream is streamed for r in records)
    assert all(r.virtual_model == "moe-auto" and r.router == "embedding-domain" for r in records)


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
def test_tool_choice_names_the_tool_and_errors_are_said(client: anthropic.Anthropic, streamed: bool) -> None:
    call, answer = _call_then_answer(
        client,
        streamed=streamed,
        tool_choice={"type": "tool", "name": "clock"},
        result={"content": [{"type": "text", "text": "timed out"}], "is_error": True},
    )
    assert call.content[-1].name == "clock"  # type: ignore[union-attr]
    # The scripted expert calls a tool when the conversation ends with the user's text: here it ends with the result.
    assert answer.content[0].text == f"[{served(answer.model)}] tool said: Error: timed out"  # type: ignore[union-attr]


def test_tool_choice_none_answers_in_text(client: anthropic.Anthropic) -> None:
    message = client.messages.create(
        model="moe-auto",
        max_tokens=64,
        tools=[LOOKUP],
        tool_choice={"type": "none"},
        messages=[{"role": "user", "content": MATH_QUESTION}],
    )
    assert message.stop_reason == "end_turn" and [b.type for b in message.content] == ["text"]


# -- LangChain -----------------------------------------------------------------------------------------------
def test_langchain_chat_anthropic(gateway: Gateway) -> None:
    from langchain_anthropic import ChatAnthropic

    llm = ChatAnthropic(
        model="moe-auto", anthropic_api_url=gateway.base_url, api_key="unused", max_retries=0, max_tokens=64
    )
    assert llm.invoke(MATH_QUESTION).content == f"[echo-stem|STEM] {MATH_QUESTION}"
    streamed = "".join(str(chunk.content) for chunk in llm.stream(HISTORY_QUESTION))
    assert streamed == f"[echo-humanities] {HISTORY_QUESTION}"
    [call] = llm.bind_tools([LOOKUP]).invoke(CAPITAL).tool_calls
    assert call["name"] == "lookup" and call["args"] == {"query": CAPITAL}
