"""Process logging: one JSON object per line (or plain text), and one access line per chat request.

`logging_config` is the dictConfig that `moe serve` hands to uvicorn, so the gateway's, uvicorn's and
litellm's loggers all go through one handler, in every worker process. The access line is built
from the finished decision record: it carries ids, outcome and timings, never prompt text, and no
request header is ever logged (so neither is `Authorization`).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any, Literal

from pythonjsonlogger.core import RESERVED_ATTRS

from gateway.decisions.record import DecisionRecord

LogFormat = Literal["json", "text"]

access_log = logging.getLogger("gateway.access")

# litellm attaches its own stderr handlers at import; routed through ours instead, and quieter,
# because its messages can carry request details.
THIRD_PARTY_WARNING_ONLY = ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "httpx")
# Record attributes that are bookkeeping, not fields: uvicorn's coloured message, litellm's redaction stamp.
_NOT_FIELDS = (*RESERVED_ATTRS, "color_message", "litellm_redacted")


def logging_config(log_format: LogFormat, level: str = "INFO") -> dict[str, Any]:
    """A `logging.config.dictConfig` for uvicorn's `log_config`: everything to stderr in `log_format`."""
    formatters: dict[str, dict[str, Any]] = {
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": ["levelname", "name", "message"],
            "rename_fields": {"levelname": "level", "name": "logger"},
            "timestamp": "time",  # ISO 8601 in UTC
            "reserved_attrs": _NOT_FIELDS,
        },
        "text": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {log_format: formatters[log_format]},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": log_format, "stream": "ext://sys.stderr"}},
        "root": {"handlers": ["stderr"], "level": level},
        "loggers": {
            # uvicorn's own config gives these handlers and stops propagation; here they share root's.
            **{name: {"handlers": [], "propagate": True} for name in ("uvicorn", "uvicorn.error", "uvicorn.access")},
            **{name: {"handlers": [], "propagate": True, "level": "WARNING"} for name in THIRD_PARTY_WARNING_ONLY},
        },
    }


def log_request(record: DecisionRecord) -> None:
    """The access line of one chat request; WARNING when the gateway or its experts failed it."""
    latency_ms = round((datetime.now(UTC) - record.created_at).total_seconds() * 1000, 3)
    router = f"{record.router}@{record.router_version}" if record.router else None
    fields = {
        "decision_id": record.id,
        "requested_model": record.requested_model,
        "virtual_model": record.virtual_model,
        "router": router,
        "expert": record.chosen_expert,
        "status": record.status,
        "http_status": record.http_status,
        "stream": record.stream,
        "cache_hit": record.cache_hit,
        "latency_ms": latency_ms,
        "routing_ms": record.routing_ms,
        "ttft_ms": record.ttft_ms,
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "cost_usd": record.cost_usd,
        # Failure kinds only: an upstream's error message may quote the prompt.
        "calls": [{"expert": c.expert, "status": c.status, "latency_ms": c.latency_ms} for c in record.calls],
    }
    level = logging.WARNING if record.http_status >= 500 else logging.INFO
    access_log.log(level, "chat %s -> %s %s %d in %.0f ms (decision %s)", record.requested_model,
                   record.chosen_expert or "-", record.status, record.http_status, latency_ms, record.id, extra=fields)
