"""The prompts service: templates as immutable versions, labels, A/B variants, tenant pins.

Public surface for other code (the CLI; other services use the generated stubs
``tollway.prompts.v1`` only):

* :mod:`tollway.prompts.admin`: ``tollway prompts push/promote/rollback/show/history``.
* :mod:`tollway.prompts.files`: the prompt file format (``deploy/prompts/*.yaml``).
"""
