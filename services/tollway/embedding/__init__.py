"""The embedding service (``python -m tollway.embedding``).

For in-process use of the models (benches, offline evaluation) import :mod:`tollway.embedding.model`; this
package imports nothing itself, so that importing its generated stubs (``tollway.embedding.v1``) stays cheap.
"""
