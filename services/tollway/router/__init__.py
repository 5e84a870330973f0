"""The router service: provider adapters, tiered model selection, retries, fallback chains
and circuit breakers shared by every replica (``python -m tollway.router``).

Modules: ``types`` (the provider-neutral request, events and error taxonomy),
``providers/`` (one adapter per wire format), ``catalog`` (deploy/models.yaml),
``routing`` and ``classifier`` (which model, and why), ``engine`` (the chain: balancing,
breakers, retries, fallback, streaming), ``balancer``, ``breaker`` and ``store`` (Redis),
``policy``, ``validation`` (the cascade's check), ``tools`` (tool-call reassembly),
``service`` (gRPC translation only).
"""
