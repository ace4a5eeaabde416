"""``python -m bridge``, the same as the ``taskmanager-bridge`` command."""

from .cli.main import main

raise SystemExit(main())
