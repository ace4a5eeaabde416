"""``python -m bridge``, the same as the ``taskmanager-bridge`` command."""

from .cli import main

raise SystemExit(main())
