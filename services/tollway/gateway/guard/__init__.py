"""Guardrails, structured output and context-window management, in-process with the gateway.

Plain domain modules (no gRPC, no Redis) that the gateway's lifecycle calls on the request
path: :mod:`.inputs` before the cache and the budget, :mod:`.output` over the streamed
deltas, :mod:`.structured` around the router call when JSON is asked for, :mod:`.context`
before the budget estimate. :mod:`.policy` reads ``deploy/guard.yaml``.

They run in the gateway rather than as a service of their own because the output guard
sits on every streamed delta, where a network hop per delta would add to the time to each
token; and every check here is CPU-bound and costs less than a gRPC round trip.
"""
