"""The operators' room: what the bridge shows and lets an operator do.

``operations.Operations`` is the one façade over the queue for status, health, the
outbox's dead rows and registration; ``status_text``, ``dashboard_page``,
``dashboard_server`` and ``metrics`` present it; ``demo`` runs the whole system.
"""
