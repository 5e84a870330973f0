"""The budget service: token and dollar quotas, reserve -> commit/release, and the usage ledger.

Public surface for other code (the CLI; other services use the generated stubs
``tollway.budget.v1`` only):

* :mod:`tollway.budget.admin`: ``tollway budget set/show/reconcile`` and ``tollway usage``.
"""
