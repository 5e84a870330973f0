"""The cache service: tier-1 exact and tier-2 semantic caching of model answers.

Public surface for other services (the gateway):

* :func:`tollway.common.codec.fingerprint_to_proto`: the RequestFingerprint of a chat request
  (shared code, so the gateway never imports this package).
* :mod:`tollway.cache.purge` ``purge(target, ...)``: the ``tollway cache purge`` command.
* :mod:`tollway.cache.keys`: what the tier-1 key is made of (INCLUDE / EXCLUDE tables).
"""
