"""The retrieval service: collections, chunking, the ingestion pipeline, hybrid search.

Public surface for other code (the CLI; other services use the generated stubs
``tollway.retrieval.v1`` only):

* :mod:`tollway.retrieval.admin`: ``tollway ingest PATH --collection C``.
"""
