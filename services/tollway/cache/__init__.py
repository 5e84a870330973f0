"""The cache service: tier-1 exact and tier-2 semantic caching of model answers.

Public surface for other services (the gateway):

* :mod:`tollway.cache.fingerprint` ``key_fields(request)``: LookupRequest/StoreRequest fields
  from a tollway.gateway.v1 request.
* :mod:`tollway.cache.purge` ``purge(target, ...)``: the ``tollway cache purge`` command.
* :mod:`tollway.cache.keys`: what the tier-1 key is made of (INCLUDE / EXCLUDE tables).
"""
