"""State the threads of one backend share about a Vault cluster: which node to ask
first, and what the manager's own writes require of a node that answers a read.

- :class:`AddressBook`: the configured node addresses. A request starts at the node
  that answered last and moves on when a node cannot be reached or cannot serve
  (sealed, standby without a leader, not caught up); the node that answers becomes the
  first choice for the next request.
- :class:`Consistency`: read-your-writes. A write's answer carries ``X-Vault-Index``
  (the cluster state that includes it); later requests send it back with
  ``X-Vault-Inconsistent: forward-active-node``, so a standby that has not caught up
  forwards the request to the active node (or answers 412/429 and is retried) instead
  of serving a value older than the write.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from urllib.parse import urlsplit

from .._process import reset_after_fork

INDEX_HEADER = "X-Vault-Index"
INCONSISTENT_HEADER = "X-Vault-Inconsistent"
FORWARD_ACTIVE = "forward-active-node"


def origin(url: str) -> str:
    """``scheme://host:port`` of ``url``, lower-cased: what a redirect is checked against."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


class AddressBook:
    """The cluster's node addresses, the last one that answered first. Thread-safe."""

    def __init__(self, addresses: Sequence[str]) -> None:
        if not addresses:
            raise ValueError("at least one Vault address is needed")
        self._addresses = tuple(addresses)
        self._origins = tuple(origin(a) for a in self._addresses)  # asked on every request
        self._preferred = 0
        self._lock = threading.Lock()
        self.failovers = 0
        reset_after_fork(self)

    def after_fork(self) -> None:
        """In a forked child: a fresh lock; counts start again, as the manager's do."""
        self._lock = threading.Lock()
        self.failovers = 0

    @property
    def addresses(self) -> tuple[str, ...]:
        return self._addresses

    def order(self) -> tuple[str, ...]:
        """Every address, starting with the preferred one."""
        start = self._preferred
        return self._addresses[start:] + self._addresses[:start]

    def answered(self, node: str) -> None:
        """The node at origin ``node`` served a request: ask it first next time."""
        for index, known in enumerate(self._origins):
            if known == node:
                self._preferred = index
                return

    def failed_over(self) -> None:
        with self._lock:
            self.failovers += 1

    def __len__(self) -> int:
        return len(self._addresses)


class Consistency:
    """The newest cluster state this manager wrote, to send with later requests."""

    def __init__(self) -> None:
        self._index: str | None = None

    def saw(self, index: str | None) -> None:
        """A write answered with ``index``: later requests must see at least that."""
        if index:
            self._index = index  # one atomic store: the newest write wins

    def headers(self) -> dict[str, str]:
        """Headers that make a node serve data at least as new as our last write."""
        index = self._index
        if index is None:
            return {}
        return {INDEX_HEADER: index, INCONSISTENT_HEADER: FORWARD_ACTIVE}
