"""What a router reads of a conversation: the last user turn, and of a very long one its start and its end."""

from __future__ import annotations

from routers.base import MAX_QUERY_CHARS, query_text


def test_the_last_user_turn_is_read_with_its_text_parts_joined() -> None:
    messages = [
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "an answer"},
        {"role": "user", "content": [{"type": "text", "text": "second"}, {"type": "image_url", "image_url": {}},
                                     {"type": "text", "text": "question"}]},
        {"role": "tool", "content": "output", "tool_call_id": "1"},
    ]
    assert query_text(messages) == "second\nquestion"
    assert query_text([{"role": "system", "content": "be brief"}]) == ""


def test_a_long_turn_is_read_by_its_start_and_its_end() -> None:
    document = "x" * (4 * MAX_QUERY_CHARS)
    text = query_text([{"role": "user", "content": f"Summarise this: {document} In French, please."}])
    assert len(text) == MAX_QUERY_CHARS + 1
    assert text.startswith("Summarise this: xxx") and text.endswith("xxx In French, please.")
    at_bound = "y" * MAX_QUERY_CHARS
    assert query_text([{"role": "user", "content": at_bound}]) == at_bound
