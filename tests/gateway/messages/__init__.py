"""Anthropic's Messages API through the gateway: the official anthropic SDK (plain, streamed, tools, count_tokens),
LangChain's ChatAnthropic, x-api-key keys, errors in Anthropic's shape; each request routed as a chat completion,
with its decision record, headers and metrics. The dialect and the translation are also tested alone."""
