"""OpenAI's Responses API (`/v1/responses`) through the official openai SDK: routed like a chat completion (same
record, headers and metrics), streamed as the Responses event sequence, function tools over three turns, structured
output, stored responses continued, read and deleted per tenant, and bad input answered in OpenAI's error shape.

The experts sit behind a spy (conftest.py) that keeps every chat completion the gateway sent them, then answers as
the scripted upstream (bench/upstream.py) does; each test module gets its own gateway.
"""
