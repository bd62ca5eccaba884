"""The KV reads secureml sends itself: what each request is, and what its answer means.

hvac's KV methods cost about as much Python per call as the rest of an uncached read
(``format_url``, its adapter's keyword plumbing, one layer of API classes), and reads
are what ``get_secret`` does most. So the read requests are built here and handed to
the backend's adapter (:class:`~._vault_transport.PolicyAdapter`) directly: they take
the same path as every hvac call from there on (token and namespace headers, retries,
fail-over, deadlines, redirect rules, TLS) and fail the same way (hvac's exceptions,
translated in :mod:`._vault_errors`). Writes, deletes and the rest of the API stay
with hvac. The sync and async managers share this, as they share the backend.

Paths are escaped as hvac escapes them (``quote`` of the UTF-8 text, ``/`` kept), so a
name reaches the same URL either way.
"""

from __future__ import annotations

from typing import Any, Protocol
from urllib.parse import quote

from .._memo import NameMemo

__all__ = ["Engine", "Requester"]


class Requester(Protocol):
    """What a read is sent through: hvac's adapter interface (``PolicyAdapter``)."""

    def request(self, method: str, url: str, **kwargs: Any) -> Any: ...


#: Paths already escaped: a read escapes its own on every call.
_escapes: NameMemo[str] = NameMemo()


def _escaped(text: str) -> str:
    escaped = _escapes.get(text)
    if escaped is None:
        escaped = quote(text.encode("utf-8"))  # hvac's utils.format_url
        _escapes.put(text, escaped)
    return escaped


class Engine:
    """A KV engine's mount, as the reads address it.

    Args:
        mount: The mount path (``secret``).
        version: The engine's KV version, 1 or 2.
    """

    __slots__ = ("_data", "_metadata", "version")

    def __init__(self, mount: str, version: int) -> None:
        if version not in (1, 2):
            raise ValueError(f"KV version must be 1 or 2, not {version!r}")
        self.version = version
        root = f"/v1/{_escaped(mount)}/"
        self._data = root + "data/" if version == 2 else root
        self._metadata = root + "metadata/"

    def data_path(self, path: str) -> str:
        """The request path of the secret at ``path`` (under the mount)."""
        return self._data + _escaped(path)

    def metadata_path(self, path: str) -> str:
        """The request path of a KV v2 secret's metadata."""
        return self._metadata + _escaped(path)

    def read(self, through: Requester, path: str, version: int | None = None) -> Any:
        """The ``data`` of Vault's answer for the secret at ``path``: the fields (KV
        v1), or ``{"data": fields, "metadata": ...}`` (KV v2, ``version`` or the
        latest); ``None`` when there is none (404: never written, deleted, destroyed).

        Raises:
            hvac.exceptions.VaultError: Any other refusal, as hvac's own call would.
        """
        import hvac.exceptions as hx

        target = self.data_path(path)
        try:
            if version is None:
                answer = through.request("GET", target)
            else:
                answer = through.request("GET", target, params={"version": version})
        except hx.InvalidPath:
            return None
        data = _data_of(answer, target)
        if self.version == 2 and (
            "data" not in data or not isinstance(data["data"], (dict, type(None)))
        ):
            raise _not_kv(target)  # a KV v2 answer always holds "data" (null once deleted)
        return data

    def read_metadata(self, through: Requester, path: str) -> Any:
        """The ``data`` of a KV v2 secret's metadata answer; ``None`` for a 404."""
        import hvac.exceptions as hx

        target = self.metadata_path(path)
        try:
            answer = through.request("GET", target)
        except hx.InvalidPath:
            return None
        return _data_of(answer, target)


def _data_of(answer: Any, target: str) -> dict[str, Any]:
    """The ``data`` object of a Vault answer; a 204, a list, or a ``data`` that is not
    an object is no KV answer (a proxy in the way, or a hostile peer)."""
    data = answer.get("data") if isinstance(answer, dict) else None
    if not isinstance(data, dict):
        raise _not_kv(target)
    return data


def _not_kv(target: str) -> Exception:
    from ..errors import VaultError

    return VaultError(
        f"Vault answered GET {target} with something that is not a KV answer (a proxy "
        "in the way, or not Vault?)"
    )
