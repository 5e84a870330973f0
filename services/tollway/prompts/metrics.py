"""The prompts service's Prometheus metrics (the shared RPC ones live in tollway.mesh.metrics)."""

from __future__ import annotations

from prometheus_client import Counter

RESOLVES = Counter("tollway_prompts_resolves_total", "Prompts resolved, by why the version was chosen.", ["resolution"])
REFUSALS = Counter(
    "tollway_prompts_render_refusals_total",
    "Renders refused, by reason (VARIABLES_MISSING, VARIABLES_INVALID, TEMPLATE_UNSAFE, TEMPLATE_LIMIT, ...).",
    ["reason"],
)
PUBLISHES = Counter(
    "tollway_prompts_publishes_total", "Publishes, by outcome (created, existing: identical content).", ["outcome"]
)
LABEL_MOVES = Counter("tollway_prompts_label_moves_total", "Label moves, by kind (set, rollback).", ["kind"])
