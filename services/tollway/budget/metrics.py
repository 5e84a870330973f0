"""The budget's Prometheus metrics (the shared RPC ones live in tollway.mesh.metrics)."""

from __future__ import annotations

from tollway.mesh.metrics import LoopCounter

RESERVATIONS = LoopCounter(
    "tollway_budget_reservations_total",
    "Reservations by outcome (granted, granted_fewer_tokens, refused) and priority.",
    ["outcome", "priority"],
)
REFUSALS = LoopCounter(
    "tollway_budget_refusals_total",
    "Quotas that refused a reservation, by scope, window and unit.",
    ["scope", "window", "unit"],
)
FINISHED = LoopCounter(
    "tollway_budget_reservations_finished_total",
    "Reservations that ended, by how (committed, committed_late, released, expired).",
    ["how"],
)
CHARGED_TOKENS = LoopCounter("tollway_budget_committed_tokens_total", "Tokens committed (input + output).")
CHARGED_USD_NANOS = LoopCounter(
    "tollway_budget_committed_usd_nanos_total", "Cost committed, in billionths of a dollar."
)
RELOAD_ERRORS = LoopCounter(
    "tollway_budget_reload_errors_total", "Plans or catalog reloads that failed (the old version stays).", ["file"]
)
