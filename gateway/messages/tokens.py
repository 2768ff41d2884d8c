"""`count_tokens`' answer: an estimate of the input tokens a Messages request would cost, from its text alone.

Which expert answers is the router's choice, made per request, and each expert counts with its own tokenizer,
which the gateway does not have (it would take the experts' weights or a call to their servers). So the count
is an estimate, as Anthropic says of its own, made the same way for every model and without network or weights:
- text, everything the expert reads (the system prompt, messages, tool calls' arguments and tool results, and
  each tool's definition as JSON, the way chat templates show tools): one token per 4 characters, OpenAI's rule
  of thumb for English text under a BPE vocabulary (code and other languages take more tokens a character);
- 4 tokens a message, for the role and delimiters a chat template wraps each message in;
- 1,600 tokens an image, Anthropic's figure for an image at the largest size it keeps (its own count is
  width x height / 750 pixels); the gateway decodes no image to measure it.
The answer's `usage.input_tokens` is the expert's own count.
"""

from __future__ import annotations

import math

from gateway.chat.protocol import AssistantMessage, ImagePart, Message, TextPart, Tool

CHARS_PER_TOKEN = 4
MESSAGE_TOKENS = 4
IMAGE_TOKENS = 1_600


def estimate_input_tokens(messages: list[Message], tools: list[Tool] | None) -> int:
    """The estimate above, for a request translated to chat (gateway/messages/translate.py)."""
    chars, images = 0, 0
    for message in messages:
        if isinstance(message.content, str):
            chars += len(message.content)
        else:
            for part in message.content or ():
                if isinstance(part, TextPart):
                    chars += len(part.text)
                elif isinstance(part, ImagePart):
                    images += 1
        if isinstance(message, AssistantMessage):
            chars += sum(len(call.function.name) + len(call.function.arguments) for call in message.tool_calls or ())
    chars += sum(len(tool.function.model_dump_json(exclude_none=True)) for tool in tools or ())
    return math.ceil(chars / CHARS_PER_TOKEN) + MESSAGE_TOKENS * len(messages) + IMAGE_TOKENS * images
