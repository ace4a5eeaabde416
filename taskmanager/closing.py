"""``with x: ...`` closing ``x`` at the end, for what holds connections (the clients,
the bridge's local queue)."""

from __future__ import annotations

from types import TracebackType
from typing import TypeVar

_C = TypeVar("_C", bound="ClosedOnExit")


class ClosedOnExit:
    """``close()`` runs when the ``with`` block ends, however it ends."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: _C) -> _C:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
