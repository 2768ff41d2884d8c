"""A legacy completion request as the chat completions chat serving answers: one per prompt, whose one user message
is the prompt, so the router reads the prompt as it reads a user's turn.

What a chat model cannot give is refused here, with OpenAI's 400 naming the field: token-id prompts (the router
reads text), `echo` (a chat answer does not repeat its prompt), `suffix` (nor fills in before a given ending),
`logprobs` (the chat endpoint returns them, per token of its message) and `best_of` above 1 (`n` asks for several
answers). A streamed request takes one prompt: each prompt is a request of its own.
"""

from __future__ import annotations

from gateway.chat.protocol import ChatCompletionRequest
from gateway.completions.protocol import CompletionRequest
from gateway.errors import APIError

# The fields a chat completion takes as they are; `max_tokens` keeps its completions default (16).
CARRIED = {
    "model",
    "max_tokens",
    "temperature",
    "top_p",
    "n",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "user",
    "stream",
    "stream_options",
}


def chat_requests(body: CompletionRequest) -> list[ChatCompletionRequest]:
    """One chat completion request per prompt, in the prompts' order; an APIError (400) for what cannot be asked."""
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if not all(isinstance(prompt, str) for prompt in prompts):
        raise _unsupported(
            "prompt",
            "Token-id prompts are not supported: the gateway routes a prompt on its text. "
            "Send the prompt as a string, or a list of strings.",
        )
    if body.stream and len(prompts) > 1:
        raise _unsupported(
            "prompt",
            "A streamed request takes one prompt (each prompt is routed as a request of its "
            "own): stream them one request each, or send the list without `stream`.",
        )
    if body.echo:
        raise _unsupported(
            "echo", "echo is not supported: the answer comes from a chat model, which does not repeat its prompt."
        )
    if body.suffix:
        raise _unsupported(
            "suffix", "suffix is not supported: the answer comes from a chat model, which only continues the prompt."
        )
    if body.logprobs is not None:
        raise _unsupported(
            "logprobs",
            "logprobs is not supported on /v1/completions: the answer comes from a chat "
            "model; /v1/chat/completions returns its log-probabilities (logprobs, "
            "top_logprobs).",
        )
    if body.best_of is not None and body.best_of > 1:
        raise _unsupported(
            "best_of",
            "best_of above 1 is not supported: the expert returns the answers it samples; ask for several with n.",
        )
    fields = body.model_dump(include=CARRIED, exclude_none=True)
    return [
        ChatCompletionRequest.model_validate({**fields, "messages": [{"role": "user", "content": prompt}]})
        for prompt in prompts
    ]


def _unsupported(param: str, message: str) -> APIError:
    return APIError(400, message, param=param, code="unsupported_value")
