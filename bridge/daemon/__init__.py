"""The daemon room: the service beside the workers that talks to the TaskManager server.

``service.Daemon`` runs ``jobs.DaemonJobs`` on a scheduler: ``pull`` claims remote tasks
into the local queue within the claim budget (``claim_budget``, ``pending_probe``),
``push`` delivers the outbox (each row through ``delivery``), ``reconcile`` imports
claims the queue lost, ``reap`` expires and re-queues. ``server_contact`` is what every
job knows of the server (outages, 429 pauses, a refused key).
"""
