"""The command line (``taskmanager-bridge``): the parser and its error handling
(``main``), and one function per subcommand (``commands``)."""

from .main import main

__all__ = ["main"]
