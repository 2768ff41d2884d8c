"""Prometheus series, observed once per request from its finished decision record.

Names follow the vLLM Semantic Router's `llm_*` family; labels are the virtual model (or "-" for a
direct expert call), the router and the expert that answered, so a dashboard can split by any.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from gateway.decisions.log import LogStatus
from gateway.decisions.record import DecisionRecord

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_DELTA_BUCKETS = (-0.5, -0.2, -0.1, -0.05, -0.01, 0, 0.01, 0.05, 0.1, 0.2, 0.5)
_ROUTING_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25)


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # A registry per app, so several gateways in one process (tests) keep separate counts.
        self.registry = registry or CollectorRegistry()
        labels = ("virtual_model", "router", "expert")
        self.requests = Counter("llm_model_requests", "Requests by outcome", (*labels, "status"), registry=self.registry)
        self.routing = Histogram("llm_model_routing_latency_seconds", "Time the router took to decide",
                                 ("virtual_model", "router"), buckets=_ROUTING_BUCKETS, registry=self.registry)
        self.upstream = Histogram("llm_model_completion_latency_seconds", "Expert call, first try to last byte",
                                  labels, buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.ttft = Histogram("llm_model_ttft_seconds", "Time to first token", labels,
                              buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.tokens = Counter("llm_model_tokens", "Tokens by kind", (*labels, "kind"), registry=self.registry)
        self.cache = Counter("llm_cache_lookups", "Response cache lookups", ("virtual_model", "result"),
                             registry=self.registry)
        self.cost = Counter("llm_model_cost_usd", "Cost in USD", labels, registry=self.registry)
        self.expert_errors = Counter("llm_expert_call_errors", "Failed expert calls by kind", ("expert", "kind"),
                                     registry=self.registry)
        self.fallbacks = Counter("llm_model_fallbacks", "Requests answered by other than the router's first pick",
                                 ("virtual_model", "router"), registry=self.registry)
        self.by_version = Counter("llm_router_version_requests", "Routed requests by the router version that decided",
                                  ("router", "version", "status"), registry=self.registry)
        self.shadow = Counter("llm_router_shadow_decisions", "Shadow router decisions, by agreement with the served one",
                              ("router", "shadow", "agreement"), registry=self.registry)
        self.shadow_delta = Histogram("llm_router_shadow_quality_delta",
                                      "Shadow's predicted quality of its pick minus the served router's of its own",
                                      ("router", "shadow"), buckets=_DELTA_BUCKETS, registry=self.registry)
        self.decision_log_pending = Gauge("llm_decision_log_pending", "Decision records not yet written",
                                          registry=self.registry)
        self.decision_log_spilled = Gauge("llm_decision_log_spilled_files", "Files of records spilled to disk",
                                          registry=self.registry)
        self.decision_log_age = Gauge("llm_decision_log_backlog_age_seconds",
                                      "Age of the oldest decision record not yet written (0: none waits)",
                                      registry=self.registry)
        self.decision_log_dead = Gauge("llm_decision_log_dead_letters",
                                       "Records the database refused for their data, set aside since start",
                                       registry=self.registry)
        self.decision_log_db = Gauge("llm_decision_log_database_reachable", "1 when the decision log's database answers",
                                     registry=self.registry)
        self.in_flight = Gauge("llm_requests_in_flight", "Chat requests being served", registry=self.registry)
        self.overload_rejections = Gauge("llm_requests_rejected_overload", "Requests refused with 429 since start",
                                         registry=self.registry)
        self.redis_up = Gauge("llm_redis_reachable", "1 when the shared-state Redis answers", registry=self.registry)
        self.expert_up = Gauge("llm_expert_healthy", "1 when the expert's server answered its last probe", ("expert",),
                               registry=self.registry)
        self.breaker_open = Gauge("llm_expert_breaker_open", "1 while the expert's circuit breaker is open (ranked last)",
                                  ("expert",), registry=self.registry)

    def observe(self, record: DecisionRecord) -> None:
        vm, router, expert = record.virtual_model or "-", record.router or "-", record.chosen_expert or "-"
        self.requests.labels(vm, router, expert, record.status).inc()
        if record.cache_hit is not None:
            self.cache.labels(vm, "hit" if record.cache_hit else "miss").inc()
        if record.routing_ms is not None:
            self.routing.labels(vm, router).observe(record.routing_ms / 1000)
        if record.status == "ok":
            if record.upstream_ms is not None:
                self.upstream.labels(vm, router, expert).observe(record.upstream_ms / 1000)
            if record.ttft_ms is not None:
                self.ttft.labels(vm, router, expert).observe(record.ttft_ms / 1000)
        for kind, count in (("prompt", record.prompt_tokens), ("completion", record.completion_tokens)):
            if count:
                self.tokens.labels(vm, router, expert, kind).inc(count)
        if record.cost_usd:
            self.cost.labels(vm, router, expert).inc(record.cost_usd)
        for call in record.calls:
            if call.status not in ("ok", "pending"):
                self.expert_errors.labels(call.expert, call.status).inc()
        if record.router is not None:
            self.by_version.labels(router, record.router_version or "-", record.status).inc()
        if record.shadow_version is not None:
            self.shadow.labels(router, record.shadow_version, "agree" if record.shadow_agrees else "disagree").inc()
            if record.shadow_delta is not None:
                self.shadow_delta.labels(router, record.shadow_version).observe(record.shadow_delta)
        if record.ranked and record.chosen_expert and record.ranked[0]["expert"] != record.chosen_expert:
            self.fallbacks.labels(vm, router).inc()

    def observe_decision_log(self, status: LogStatus) -> None:
        self.decision_log_pending.set(status.pending)
        self.decision_log_spilled.set(status.spilled_files)
        self.decision_log_age.set(status.backlog_age_s)
        self.decision_log_dead.set(status.dead_letters)
        self.decision_log_db.set(1 if status.database_reachable else 0)
