"""Gateway settings, from ``TOLLWAY_GATEWAY_*``."""

from __future__ import annotations

from tollway.mesh.frozen import frozen


@frozen
class GatewayConfig:
    """Attributes:
    port: gRPC port.
    metrics_port: Prometheus port; 0 turns it off.
    router_addr: Where RouterService listens (its own port, or Envoy's mesh listener).
    auth_cache_ttl_s: How long a verified API key is trusted without asking Redis again;
        a revoked key stops working after at most this long.
    max_input_chars: The most characters all messages of one request may hold together.
    max_messages: The most messages one request may hold.
    default_max_tokens: max_tokens when a request leaves it at 0.
    call_log_maxlen: Approximate length the call-record stream is trimmed to.
    request_timeout_s: Deadline of the router call when the client set none.
    catalog: The model catalog (the router's file), for prices and the model list.
    cache_addr: Where CacheService listens; empty runs without a response cache.
    embedding_addr: Where EmbeddingService listens; empty turns the semantic tier off.
    embedding_model: The embedding model for cache vectors; empty means the service's default.
    embedding_budget_model: The catalog model the Embed RPC reserves and prices embeddings as,
        when the catalog does not list the embedding model itself; empty means the catalog's
        ``routing.last_resort`` (the self-hosted model), and with neither nothing is reserved.
    cache_timeout_s: Deadline of one cache call; past it the request goes on without the cache.
    budget_addr: Where BudgetService listens; empty runs without budgets (nothing is reserved).
    budget_timeout_s: Deadline of one budget call (the channel retries UNAVAILABLE within it).
    budget_when_unavailable: "admit" or "refuse": what happens to a tenant's requests while
        the budget service is down if this gateway never learned that tenant's policy (the
        budget service sends it with every reservation).
    budget_drain_interval_s: Seconds between replays of budget settlements queued while the
        budget service was down.
    budget_settle_delay_s: How long a finished call's commit or release waits, with the others
        of that moment, before it starts (0: at once); see ``tollway.gateway.lifecycle``.
    prompts_addr: Where PromptsService listens; empty runs without the prompt store (a
        request with ``prompt_ref`` is then refused with FAILED_PRECONDITION).
    prompts_timeout_s: Deadline of one ResolvePrompt (the channel retries UNAVAILABLE within it).
    retrieval_addr: Where RetrievalService listens; empty runs without grounding (a request
        with ``retrieval`` is then refused with FAILED_PRECONDITION).
    retrieval_timeout_s: Deadline of one Search (the channel retries UNAVAILABLE within it).
    guard_policy: The guard policy file (``deploy/guard.yaml``); empty runs without guards. A
        malformed file stops the gateway at start, naming the key; a bad edit later keeps the
        policies in force.
    guard_reload_interval_s: Seconds between checks for a changed guard policy file (0: never).
    admin_tenants: Comma-separated tenants whose keys see every tenant's usage and calls
        (InsightsService, the console); every other key sees only its own tenant.
    raw_log_tenants: Comma-separated tenants whose raw prompts and answers are kept apart
        from the call records ("*": every tenant; empty: none, only hashes are kept).
    raw_log_retention_s: Seconds a kept raw prompt and answer stay readable.
    feedback_window_s: Seconds a call can be given feedback after it: each call's attribution
        is kept this long in Redis by its request id, ~260 bytes a call (at 100 requests/s, the
        default 30 days hold ~64 GiB; bench/redis_memory.py).
    """

    port: int = 50051
    metrics_port: int = 0
    router_addr: str = "127.0.0.1:50055"
    auth_cache_ttl_s: float = 10.0
    max_input_chars: int = 400_000
    max_messages: int = 512
    default_max_tokens: int = 256
    call_log_maxlen: int = 1_000_000
    request_timeout_s: float = 300.0
    catalog: str = "deploy/models.yaml"
    cache_addr: str = ""
    embedding_addr: str = ""
    embedding_model: str = ""
    embedding_budget_model: str = ""
    cache_timeout_s: float = 0.5
    budget_addr: str = ""
    budget_timeout_s: float = 2.0
    budget_when_unavailable: str = "refuse"
    budget_drain_interval_s: float = 1.0
    budget_settle_delay_s: float = 0.02
    prompts_addr: str = ""
    prompts_timeout_s: float = 2.0
    retrieval_addr: str = ""
    retrieval_timeout_s: float = 2.0
    guard_policy: str = "deploy/guard.yaml"
    guard_reload_interval_s: float = 5.0
    admin_tenants: str = "admin"
    raw_log_tenants: str = ""
    raw_log_retention_s: int = 7 * 86400
    feedback_window_s: int = 30 * 86400

    def __post_init__(self) -> None:
        if self.budget_when_unavailable not in ("admit", "refuse"):
            raise ValueError(
                f"Config 'TOLLWAY_GATEWAY_BUDGET_WHEN_UNAVAILABLE' has value {self.budget_when_unavailable!r}. "
                "Must be admit or refuse."
            )
        if not 0 <= self.budget_settle_delay_s <= 1:
            raise ValueError(
                f"Config 'TOLLWAY_GATEWAY_BUDGET_SETTLE_DELAY_S' has value {self.budget_settle_delay_s!r}. "
                "Must be 0 to 1 (seconds)."
            )
        for name in (
            "budget_timeout_s",
            "budget_drain_interval_s",
            "prompts_timeout_s",
            "raw_log_retention_s",
            "feedback_window_s",
            "retrieval_timeout_s",
        ):
            value = getattr(self, name)
            if value <= 0:
                raise ValueError(f"Config 'TOLLWAY_GATEWAY_{name.upper()}' has value {value!r}. Must be above 0.")
