"""Secrets in a HashiCorp Vault or OpenBao KV engine (v1 or v2), through hvac.

Layout: secret ``name`` lives at ``<mount>/<path>/<name>`` in the field ``value``, so
``bao kv put -mount=secret secureml/api_key value=abc`` is what ``get("api_key")``
reads. Bytes are stored as base64 text with a sibling field ``encoding=base64``. A
secret with several fields and no ``value`` is returned whole, as a dict.

KV reads (the hot path) are built by :mod:`._vault_kv` and handed to the adapter
directly; everything else is hvac's API. Every request goes through
:meth:`VaultBackend._call`: it takes a token from the
:class:`~._vault_session.TokenSession` (which logs in and renews), logs in again and
retries once when Vault rejects the token, and translates hvac and requests exceptions
into our hierarchy (``from None``: hvac keeps the server's response body on its
exceptions). Retries, timeouts and redirects are the transport's job
(:mod:`._vault_transport`).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, TypeVar

from .._boundary import guarded_class, scrub, scrubs_inline
from .._bridge import blocking, greenlet_local
from .._config import INSTALL_HINT, VaultSettings
from .._process import reset_after_fork
from .._validate import VALUE_FIELD
from ..errors import (
    AuthenticationError,
    ConfigurationError,
    KeyFormatError,
    KeyManagementError,
    PermissionDeniedError,
    UnsupportedOperationError,
    VaultError,
    VaultUnavailableError,
    VersionConflictError,
)
from ._vault_cluster import AddressBook, Consistency
from ._vault_errors import translated, vault_errors
from ._vault_kv import Engine
from ._vault_session import TokenSession
from .base import KeyVersion, SecretMetadata, SecretValue

if TYPE_CHECKING:
    import hvac

    from ._vault_http import Pools

__all__ = ["ENCODING_FIELD", "VALUE_FIELD", "VaultBackend", "VaultHealth"]

ENCODING_FIELD = "encoding"

_T = TypeVar("_T")

#: Versions a KV v2 mount keeps when neither the secret nor the mount says otherwise.
KV_DEFAULT_MAX_VERSIONS = 10

# Vault's timestamps carry nanoseconds and a "Z"; Python 3.10 parses neither.
_TIMESTAMP = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?")

#: ``sys/health`` answers 200 in every state with these, so a status probe never
#: looks like a failure worth retrying.
_HEALTH_PARAMS = {
    "standbyok": "true",
    "perfstandbyok": "true",
    "sealedcode": "200",
    "uninitcode": "200",
    "drsecondarycode": "200",
    "performancestandbycode": "200",
}


@dataclass(frozen=True)
class VaultHealth:
    """How the server and this backend's credentials are doing; holds no secret or token.

    Fields are ``None`` when unknown: the server could not be reached, or the question
    needs a token that could not be obtained (``error`` says why).

    Attributes:
        vault_url: The address asked first.
        reachable: The server answered its health check.
        initialized: The server has been initialized.
        sealed: The server is sealed.
        server_version: e.g. ``2.4.1``.
        auth_method: ``token``, ``approle``, ...
        token_ttl: Seconds the token has left; ``None`` if it never expires or is unknown.
        renewable: Whether the token can be renewed.
        kv_mount: The KV engine's mount path.
        kv_version: 1 or 2.
        namespace: The namespace requests go to.
        logins: Logins so far by a method that can log in again.
        renewals: Token renewals so far.
        error: Why a field is unknown, or ``None``.
    """

    vault_url: str | None = None
    reachable: bool = False
    initialized: bool | None = None
    sealed: bool | None = None
    server_version: str | None = None
    auth_method: str | None = None
    token_ttl: float | None = None
    renewable: bool | None = None
    kv_mount: str | None = None
    kv_version: int | None = None
    namespace: str | None = None
    logins: int = 0
    renewals: int = 0
    error: str | None = None


def pack_fields(value: SecretValue) -> dict[str, Any]:
    """The KV fields that store ``value`` (see the module docstring for the layout)."""
    if isinstance(value, str):
        return {VALUE_FIELD: value}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {VALUE_FIELD: base64.b64encode(value).decode("ascii"), ENCODING_FIELD: "base64"}
    return dict(value)


def parse_timestamp(text: object) -> datetime | None:
    """A Vault timestamp as an aware UTC ``datetime``; ``None`` for an empty one."""
    match = _TIMESTAMP.fullmatch(str(text or "").strip())
    if match is None:
        return None
    seconds, fraction, zone = match.groups()
    stamp = datetime.fromisoformat(
        f"{seconds}.{(fraction or '0')[:6]:0<6}{'+00:00' if zone in (None, 'Z') else zone}"
    )
    return stamp.astimezone(timezone.utc)


def parse_metadata(data: Mapping[str, Any]) -> tuple[SecretMetadata, int]:
    """KV v2 metadata as :class:`SecretMetadata`, and the secret's own ``max_versions``
    (0: the mount's default applies)."""
    current = int(data.get("current_version") or 0)
    epoch = datetime.fromtimestamp(0, timezone.utc)
    versions = []
    for number, record in sorted((int(k), v) for k, v in (data.get("versions") or {}).items()):
        deleted_at = parse_timestamp(record.get("deletion_time"))
        versions.append(
            KeyVersion(
                version=number,
                created_at=parse_timestamp(record.get("created_time")) or epoch,
                # A deletion time in the future is a scheduled delete_version_after.
                deleted=deleted_at is not None and deleted_at <= datetime.now(timezone.utc),
                destroyed=bool(record.get("destroyed")),
                is_current=number == current,
                deleted_at=deleted_at,
            )
        )
    own_max = int(data.get("max_versions") or 0)
    metadata = SecretMetadata(
        current_version=current,
        versions=tuple(versions),
        max_versions=own_max,
        custom_metadata={str(k): str(v) for k, v in (data.get("custom_metadata") or {}).items()},
    )
    return metadata, own_max


def unpack_fields(fields: Mapping[str, Any], where: str) -> SecretValue:
    """The secret a KV entry's fields hold: ``value`` (decoded), or all fields."""
    if VALUE_FIELD not in fields:
        return dict(fields)
    value = fields[VALUE_FIELD]
    encoding = fields.get(ENCODING_FIELD)
    if encoding is None:
        return value  # type: ignore[no-any-return]
    if encoding != "base64" or not isinstance(value, str):
        raise KeyFormatError(
            f"secret at {where} has encoding {encoding!r}; only 'base64' text is understood"
        )
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise KeyFormatError(f"secret at {where} is marked base64 but does not decode") from None


class _CallDeadline:
    """:meth:`VaultBackend._deadline`'s context (a class: it runs twice per read)."""

    __slots__ = ("_adapter", "_outermost")

    def __init__(self, adapter: Any) -> None:
        self._adapter = adapter
        self._outermost = False

    def __enter__(self) -> float:
        adapter = self._adapter
        if adapter.call_deadline is None:
            self._outermost = True
            adapter.call_deadline = time.monotonic() + adapter.budget()
        deadline: float = adapter.call_deadline
        return deadline

    def __exit__(self, *exc_info: object) -> None:
        if self._outermost:
            self._adapter.call_deadline = None


def _read_fields(client: hvac.Client, engine: Engine, path: str, version: int | None) -> Any:
    """A KV read's fields (``None``: no such secret): :meth:`VaultBackend.get`'s op."""
    data = engine.read(client.adapter, path, version)
    if data is None or engine.version == 1:
        return data
    return data["data"]


@guarded_class  # public: a denied call must not carry the token or a value in a frame
class VaultBackend:
    """A Vault / OpenBao KV engine as a :class:`~.base.SecretBackend`.

    The KV version is detected from the mount on first use (through
    ``sys/internal/ui/mounts``, which least-privilege tokens may read for their own
    paths) unless ``kv_version`` is given. Each thread gets its own hvac client and
    ``requests.Session`` (a session was never promised to be thread-safe); all threads
    share one token session, so they log in once, not once each.

    Args:
        settings: Where Vault is, how to log in, TLS, timeouts and retries.
        mount: The KV engine's mount path (``secret`` by default in Vault and OpenBao).
        path: The folder under the mount that holds secureml's secrets.
        kv_version: 1 or 2 to skip detection; ``None`` to detect.

    Example:
        >>> settings = VaultSettings("https://vault.example.com:8200", TokenAuth("..."))
        >>> VaultBackend(settings).locate("api_key")
        'vault:secret/secureml/api_key'
    """

    def __init__(
        self,
        settings: VaultSettings,
        *,
        mount: str = "secret",
        path: str = "secureml",
        kv_version: int | None = None,
    ) -> None:
        if kv_version not in (None, 1, 2):
            raise ValueError(f"vault_kv_version must be 1, 2 or None; got {kv_version!r}")
        self._settings = settings
        self._mount = mount
        self._path = path
        self._kv_version = kv_version
        self._kv_engine: Engine | None = None
        self._max_versions: int | None = None
        self._mount_config_read = False
        self._detect_lock = threading.Lock()
        self._local = threading.local()
        self._session = TokenSession(
            settings.auth,
            url=settings.url,
            namespace=settings.namespace,
            first_login_delay=settings.login_jitter or 0.0,
        )
        # Shared by every thread's client: which node answers, what we wrote last.
        self._addresses = AddressBook(settings.urls)
        self._consistency = Consistency()
        self._pool: Pools | None = None
        self._session_stub: Any = None  # made with the pool
        self._pool_lock = threading.Lock()
        self._spare: list[hvac.Client] = []  # bridged reads' clients, between reads
        self._budget: float | None = None
        self._pid = os.getpid()
        reset_after_fork(self)

    def after_fork(self) -> None:
        """In a forked child: drop the inherited connections (the parent still reads
        from those sockets: sharing one would hand each process the other's answers)
        and every thread's client, without closing anything the parent uses. The token
        session and the detected KV version are kept: they are as true here."""
        self._local = threading.local()
        self._pool = None
        self._session_stub = None
        self._pool_lock = threading.Lock()
        self._spare = []
        self._detect_lock = threading.Lock()
        self._pid = os.getpid()

    @property
    def source(self) -> str:
        return "vault"

    @property
    def settings(self) -> VaultSettings:
        """The connection settings (their ``repr`` hides credentials)."""
        return self._settings

    @property
    def failovers(self) -> int:
        """Requests that moved on to another node of the cluster."""
        return self._addresses.failovers

    @property
    def session(self) -> TokenSession:
        """The token session shared by every thread (login and renewal counts)."""
        return self._session

    def locate(self, name: str) -> str:
        return self._located(self._secret_path(name))

    def _located(self, path: str) -> str:
        """:meth:`locate` of a path under the mount (unguarded: reads use it)."""
        return f"vault:{self._mount}/{path}"

    def _secret_path(self, name: str) -> str:
        return f"{self._path}/{name}" if self._path else name

    # -- I/O -------------------------------------------------------------------------

    @scrubs_inline
    def get(self, name: str, version: int | None = None) -> SecretValue | None:
        try:
            return self._get(name, version)
        except BaseException as exc:  # the hot path: scrubbed inline, not wrapped
            del self  # the one frame scrub leaves: it must not reach the token
            scrub(exc)
            raise

    def _get(self, name: str, version: int | None) -> SecretValue | None:
        path = self._secret_path(name)
        where = self._located(path)
        engine = self._kv_engine
        if engine is not None and (version is None or engine.version == 2):
            fields = self._call("read", where, _read_fields, engine, path, version)
        else:
            # Cold: the mount's KV version first (a v1 mount refuses version= before any
            # token is taken or request sent), in one deadline with the read.
            with self._deadline():
                engine = self._engine()
                if engine.version == 1 and version is not None:
                    raise UnsupportedOperationError(
                        f"{where} is on a KV v1 mount, which keeps no versions"
                    )
                fields = self._call("read", where, _read_fields, engine, path, version)
        if fields is None:
            return None
        return unpack_fields(fields, where)

    def put(self, name: str, value: SecretValue) -> None:
        fields = pack_fields(value)
        with self._deadline():
            kv = self.kv_version()

            def write(client: hvac.Client) -> None:
                engine = client.secrets.kv.v2 if kv == 2 else client.secrets.kv.v1
                engine.create_or_update_secret(
                    path=self._secret_path(name), secret=fields, mount_point=self._mount
                )

            self._call("write", self.locate(name), write)

    def delete(self, name: str) -> None:
        with self._deadline():
            self._delete(name)

    def _delete(self, name: str) -> None:
        kv = self.kv_version()

        def delete(client: hvac.Client) -> None:
            if kv == 2:
                client.secrets.kv.v2.delete_latest_version_of_secret(
                    path=self._secret_path(name), mount_point=self._mount
                )
            else:
                client.secrets.kv.v1.delete_secret(
                    path=self._secret_path(name), mount_point=self._mount
                )

        self._call("delete", self.locate(name), delete)

    # -- versions (KV v2) -------------------------------------------------------------

    def get_latest(self, name: str) -> tuple[SecretValue, int] | None:
        where = self.locate(name)
        with self._deadline():
            self._require_versions("read the latest version of", where)

            engine = self._engine()
            path = self._secret_path(name)
            data = self._call("read", where, lambda client: engine.read(client.adapter, path))
        if data is None or data.get("data") is None:
            return None
        metadata = data.get("metadata")
        version = metadata.get("version") if isinstance(metadata, dict) else None
        if type(version) is not int or version < 1:
            raise VaultError(f"Vault's answer for {where} names no version (not Vault's KV v2?)")
        return unpack_fields(data["data"], where), version

    def put_version(self, name: str, value: SecretValue, *, cas: int | None = None) -> int:
        fields = pack_fields(value)
        where = self.locate(name)
        with self._deadline():
            self._require_versions("write a new version of", where)

            def write(client: hvac.Client) -> int | None:
                import hvac.exceptions as hx

                try:
                    response = client.secrets.kv.v2.create_or_update_secret(
                        path=self._secret_path(name),
                        secret=fields,
                        cas=cas,
                        mount_point=self._mount,
                    )
                except hx.InvalidRequest as exc:
                    if cas is None or "check-and-set" not in vault_errors(exc):
                        raise
                    return None
                return int(response["data"]["version"])

            written = self._call("write", where, write)
            if written is not None:
                return written
            expected = (cas or 0) + 1
            # The transport replays a check-and-set write whose answer was lost: if the
            # first attempt landed, the replay "conflicts" with our own version.
            if self._get(name, expected) == unpack_fields(fields, where):
                return expected
            found = "it already exists" if cas == 0 else f"it is no longer at version {cas}"
            raise VersionConflictError(
                f"another writer changed {where} first ({found}); nothing was written: "
                "read its versions and decide again"
            )

    def metadata(self, name: str) -> SecretMetadata | None:
        where = self.locate(name)
        with self._deadline():
            self._require_versions("read the versions of", where)

            engine = self._engine()
            path = self._secret_path(name)
            data = self._call(
                "read the metadata of",
                where,
                lambda client: engine.read_metadata(client.adapter, path),
            )
            if data is None:
                return None
            metadata, own_max = parse_metadata(data)
            return replace(metadata, max_versions=self._versions_kept(own_max))

    def set_custom_metadata(self, name: str, metadata: Mapping[str, str]) -> None:
        where = self.locate(name)
        with self._deadline():
            self._require_versions("label", where)
            target = self._engine().metadata_path(self._secret_path(name))
            # Only custom_metadata is sent: Vault leaves the fields it is not given alone.
            self._call(
                "write the metadata of",
                where,
                lambda client: client.adapter.post(
                    target, json={"custom_metadata": dict(metadata)}
                ),
            )

    def delete_versions(self, name: str, versions: Sequence[int] | None, *, destroy: bool) -> None:
        where = self.locate(name)
        with self._deadline():
            if self.kv_version() == 1:
                raise UnsupportedOperationError(
                    f"cannot {'destroy versions of' if destroy else 'soft-delete'} {where}: "
                    "it is on a KV v1 mount, which keeps no versions and whose deletes "
                    "cannot be undone; pass destroy=True (and no versions) to delete it "
                    "for good"
                )
            if versions is None and not destroy:
                self._delete(name)  # KV v2: soft-deletes the latest version
                return
            chosen = self._versions_or_latest(name, versions)
            if chosen is None:
                return

            def delete(client: hvac.Client) -> None:
                kv2 = client.secrets.kv.v2
                remove = kv2.destroy_secret_versions if destroy else kv2.delete_secret_versions
                remove(path=self._secret_path(name), versions=chosen, mount_point=self._mount)

            self._call("destroy versions of" if destroy else "delete versions of", where, delete)

    def _versions_or_latest(self, name: str, versions: Sequence[int] | None) -> list[int] | None:
        """``versions``, or (``None``) the latest version; ``None`` if there is none."""
        if versions is not None:
            return list(versions)
        metadata = self.metadata(name)
        return None if metadata is None else [metadata.current_version]

    def undelete_versions(self, name: str, versions: Sequence[int] | None) -> None:
        """Restore soft-deleted versions (``None``: the latest); destroyed ones are gone.
        An optional part of a versioned backend: the manager asks for it by name."""
        where = self.locate(name)
        with self._deadline():
            if self.kv_version() == 1:
                raise UnsupportedOperationError(
                    f"cannot undelete {where}: it is on a KV v1 mount, whose deletes are for good"
                )
            chosen = self._versions_or_latest(name, versions)
            if chosen is None:
                return
            self._call(
                "undelete versions of",
                where,
                lambda client: client.secrets.kv.v2.undelete_secret_versions(
                    path=self._secret_path(name), versions=chosen, mount_point=self._mount
                ),
            )

    def destroy_all(self, name: str) -> None:
        where = self.locate(name)
        with self._deadline():
            if self.kv_version() == 1:
                self._delete(name)  # KV v1 deletes are already for good
                return
            self._call(
                "destroy",
                where,
                lambda client: client.secrets.kv.v2.delete_metadata_and_all_versions(
                    path=self._secret_path(name), mount_point=self._mount
                ),
            )

    def list_names(self, prefix: str = "") -> list[str]:
        folder, slash, start = prefix.rpartition("/")
        top = folder + slash
        names: list[str] = []
        pending = [top]
        while pending:  # each folder is its own call, with its own deadline
            current = pending.pop()
            for key in self._list_folder(current):
                if current == top and not key.startswith(start):
                    continue
                (pending if key.endswith("/") else names).append(current + key)
        return sorted(names)

    def _list_folder(self, folder: str) -> list[str]:
        where = self._located(self._secret_path(folder))
        with self._deadline():
            kv = self.kv_version()

            def list_keys(client: hvac.Client) -> list[str]:
                import hvac.exceptions as hx

                engine = client.secrets.kv.v2 if kv == 2 else client.secrets.kv.v1
                try:
                    response = engine.list_secrets(
                        path=self._secret_path(folder), mount_point=self._mount
                    )
                except hx.InvalidPath:
                    return []  # an empty or missing folder
                return [str(k) for k in (response.get("data") or {}).get("keys") or []]

            return self._call("list", where, list_keys)

    def api(
        self,
        method: str,
        path: str,
        *,
        action: str,
        where: str,
        body: Mapping[str, Any] | None = None,
        replayable: bool | None = None,
        refused: Callable[[Exception], KeyManagementError | None] | None = None,
    ) -> dict[str, Any]:
        """One request to Vault's HTTP API (``path`` after ``/v1/``), with the token,
        retries, deadline and error translation of every other call.

        Args:
            action, where: What is being done to what, for error messages.
            body: The JSON body.
            replayable: Whether a repeat is harmless (``None``: judge by the method).
            refused: Maps a 400 or 404 answer (hvac's ``InvalidRequest``,
                ``InvalidPath``) to our error, or
                ``None`` to use the generic one. It may read Vault's answer, but must
                not put plaintext from it into a message.

        Returns:
            Vault's JSON answer (``{}`` for 204).
        """
        url = f"/v1/{path}"
        extra: dict[str, Any] = {} if body is None else {"json": dict(body)}
        if replayable is not None:
            extra["replayable"] = replayable

        def send(client: hvac.Client) -> dict[str, Any]:
            import hvac.exceptions as hx

            try:
                answer = client.adapter.request(method, url, **extra)
            except (hx.InvalidRequest, hx.InvalidPath) as exc:
                mapped = refused(exc) if refused is not None else None
                if mapped is None:
                    raise
                raise mapped from None
            return answer if isinstance(answer, dict) else {}

        return self._call(action, where, send)

    def _require_versions(self, action: str, where: str) -> None:
        if self.kv_version() == 1:
            raise UnsupportedOperationError(
                f"cannot {action} {where}: it is on a KV v1 mount, which keeps no versions; "
                "use a KV v2 mount (bao secrets enable -version=2 kv) to generate, rotate "
                "and read versions of keys"
            )

    def _versions_kept(self, own_max: int) -> int | None:
        """How many versions Vault keeps of a secret whose own ``max_versions`` is
        ``own_max``: the larger of it and the mount's, 10 when neither is set (what
        OpenBao's KV engine does). ``None`` if the mount's setting matters but may not be
        read: it could be below 10, so guessing could lose a version."""
        mount_max = self._mount_max_versions()
        if mount_max is None:
            return own_max or None  # the mount's may be larger: own_max errs on the safe side
        return max(own_max, mount_max) or KV_DEFAULT_MAX_VERSIONS

    def _mount_max_versions(self) -> int | None:
        """The mount's ``max_versions`` (0: unset), read once; ``None`` if the token may
        not read ``<mount>/config``."""
        if not self._mount_config_read:

            def read(client: hvac.Client) -> int:
                config = client.secrets.kv.v2.read_configuration(mount_point=self._mount)
                return int((config.get("data") or {}).get("max_versions") or 0)

            try:
                self._max_versions = self._call(
                    "read the configuration of", f"vault:{self._mount}/", read
                )
            except PermissionDeniedError:
                self._max_versions = None
            self._mount_config_read = True
        return self._max_versions

    def _engine(self) -> Engine:
        """The KV engine the reads address (:mod:`._vault_kv`), once its version is known."""
        engine = self._kv_engine
        if engine is None:
            engine = self._kv_engine = Engine(self._mount, self.kv_version())
        return engine

    def kv_version(self) -> int:
        """The mount's KV version (1 or 2), detected once and remembered."""
        if self._kv_version is None:
            with self._deadline() as deadline:
                # On an event loop, on a thread: the lock is held across a request.
                blocking(self._detect_once, deadline)
        assert self._kv_version is not None  # noqa: S101 - set by _detect_once
        return self._kv_version

    def _detect_once(self, deadline: float) -> None:
        """Detect the KV version under the lock, unless another thread just did."""
        # Threads queue here while one detects; none waits past its deadline.
        if not self._detect_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise VaultUnavailableError(
                f"gave up waiting for another thread to detect the KV version of "
                f"vault:{self._mount}/ at {self._settings.url} within this call's deadline"
            )
        adapter = self._client().adapter  # on a pool thread: that thread's client
        outer = adapter.call_deadline
        adapter.call_deadline = deadline  # the caller's, wherever this runs
        try:
            if self._kv_version is None:
                self._kv_version = self._detect_kv_version()
        finally:
            adapter.call_deadline = outer
            self._detect_lock.release()

    def _detect_kv_version(self) -> int:
        probe = f"{self._mount}/{self._path}".rstrip("/")
        try:
            response = self._call(
                "detect the KV version of",
                f"vault:{self._mount}/",
                lambda client: client.adapter.get(f"/v1/sys/internal/ui/mounts/{probe}"),
            )
        except PermissionDeniedError:
            if not self._no_such_mount():
                raise
            mount = self._mount
            raise ConfigurationError(
                f"no KV engine is mounted at {mount!r} on Vault at {self._settings.url}: "
                f"set vault_mount= to the KV mount, or enable one (bao secrets enable "
                f"-path={mount} kv-v2)"
            ).in_cli_words(
                f"no KV engine is mounted at {mount!r} on Vault at {self._settings.url}: "
                f"pass --mount with the KV mount, or enable one (bao secrets enable "
                f"-path={mount} kv-v2)"
            ) from None
        data = response.get("data") or {}
        engine = data.get("type")
        if engine not in ("kv", "generic"):
            raise ConfigurationError(
                f"Vault mount {self._mount!r} is a {engine or 'unknown'} engine, not KV; "
                "set vault_mount= to a KV mount"
            )
        found = str(data.get("path", "")).strip("/")
        if found != self._mount:
            raise ConfigurationError(
                f"{self._mount!r} is not a mount point; the KV mount there is {found!r}: "
                f"set vault_mount={found!r} and put the rest in vault_path="
            )
        return 2 if str((data.get("options") or {}).get("version", "1")) == "2" else 1

    def _no_such_mount(self) -> bool:
        """After a 403 on the mount: whether the token is root (so may see every mount)
        and the mount is not among them. Any other token cannot tell a mount it may not
        see from one that is not there."""
        try:
            token = self._call(
                "look up the token of",
                "the server",
                lambda client: client.adapter.get("/v1/auth/token/lookup-self"),
            )
            if "root" not in ((token.get("data") or {}).get("policies") or []):
                return False
            listed = self._call(
                "list the mounts of",
                "the server",
                lambda client: client.adapter.get("/v1/sys/internal/ui/mounts"),
            )
        except KeyManagementError:
            return False
        mounts = (listed.get("data") or {}).get("secret") or {}
        return f"{self._mount}/" not in mounts

    # -- status ----------------------------------------------------------------------

    def call_budget(self) -> float:
        """The most seconds one call may take: every attempt, on every node, and the
        backoff between them (what a caller waiting for another's read may wait)."""
        budget = self._budget
        if budget is None:  # fixed by the settings: worked out once
            budget = self._budget = float(self._client().adapter.budget())
        return budget

    def health(self) -> VaultHealth:
        """Health, token and mount facts; never raises for an unreachable server.

        One health request (not retried); then, if Vault is up, the token (logging in
        if none is held yet) and the KV version.
        """
        s = self._settings
        base = VaultHealth(
            vault_url=s.url,
            auth_method=s.auth.method,
            kv_mount=self._mount,
            kv_version=self._kv_version,
            namespace=s.namespace,
        )
        try:
            health = self._translated(
                "check the health of",
                "the server",
                lambda: self._client().adapter.get(
                    "/v1/sys/health", params=_HEALTH_PARAMS, retries=0, bare=True
                ),
            )
        except KeyManagementError as exc:
            return self._with_counts(base, error=str(exc))
        sealed = bool(health.get("sealed"))
        base = self._with_counts(
            base,
            reachable=True,
            initialized=bool(health.get("initialized")),
            sealed=sealed,
            server_version=health.get("version"),
        )
        if sealed or not base.initialized:
            return base
        try:
            kv_version = self.kv_version()
            lookup = self._call(
                "look up the token for",
                "the server",
                lambda client: client.adapter.get("/v1/auth/token/lookup-self", retries=0),
            )
        except KeyManagementError as exc:
            return self._with_counts(base, kv_version=self._kv_version, error=str(exc))
        data = lookup.get("data") or {}
        return self._with_counts(
            base,
            kv_version=kv_version,
            # Tokens that never expire (root) have no expire_time; others may be at 0 s.
            token_ttl=float(data.get("ttl") or 0) if data.get("expire_time") else None,
            renewable=bool(data.get("renewable")),
        )

    def _with_counts(self, status: VaultHealth, **changes: Any) -> VaultHealth:
        return replace(
            status, logins=self._session.logins, renewals=self._session.renewals, **changes
        )

    # -- plumbing --------------------------------------------------------------------

    def _call(self, action: str, where: str, op: Callable[..., _T], *args: Any) -> _T:
        """Run ``op(client, *args)`` with a valid token; log in again and retry once if
        it was rejected."""
        client = self._client()
        with _CallDeadline(client.adapter):  # nested in a call's own: that one's deadline
            result: _T = translated(
                self._attempt,
                client,
                action,
                where,
                op,
                *args,
                url=self._settings.url,
                action=action,
                where=where,
            )
        return result

    def _attempt(
        self, client: hvac.Client, action: str, where: str, op: Callable[..., _T], *args: Any
    ) -> _T:
        # A method and its arguments, not closures: a read holds them across its wait
        # for Vault, where the collector walks what it holds.
        import hvac.exceptions as hx

        for retry in (False, True):
            token, generation = self._session.token(client)
            client.token = token
            try:
                return op(client, *args)
            except (hx.Forbidden, hx.Unauthorized):
                # A token minted for this retry is not stale: a 403 is the policy's
                # (the token may lack the default policy that lets it look itself up).
                if retry or self._token_still_valid(client):
                    raise PermissionDeniedError(
                        f"Vault at {self._settings.url} denied permission to {action} "
                        f"{where}: the token's policies do not allow it (or the mount "
                        "does not exist)"
                    ) from None
                if self._session.rejected(generation):
                    continue  # logged out: log in again and retry once
                raise self._rejected_token(action, where) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _deadline(self) -> _CallDeadline:
        """One deadline for a whole public call: KV detection, login, retry and all.

        Nested uses keep the outer deadline. ``with`` gives it (``time.monotonic()``
        seconds).
        """
        return _CallDeadline(self._client().adapter)

    def _translated(self, action: str, where: str, op: Callable[[], _T]) -> _T:
        return translated(op, url=self._settings.url, action=action, where=where)

    def _token_still_valid(self, client: hvac.Client) -> bool:
        """After a 403: does Vault still accept the token (so the policy said no)?"""
        import hvac.exceptions as hx

        try:
            client.adapter.get("/v1/auth/token/lookup-self", retries=0)
        except (hx.Forbidden, hx.Unauthorized):
            return False
        except Exception:
            return True
        return True

    def _rejected_token(self, action: str, where: str) -> AuthenticationError:
        """A plain token Vault no longer accepts; nothing can log in again."""
        return AuthenticationError(
            f"Vault at {self._settings.url} rejected the token (invalid, expired or revoked) "
            f"while trying to {action} {where}; a plain token cannot log in again, so "
            "supply a new one or use an auth method such as AppRoleAuth"
        ).in_cli_words(
            f"Vault at {self._settings.url} rejected the token (invalid, expired or revoked) "
            f"while trying to {action} {where}: log in again (bao login) or set a new "
            "BAO_TOKEN"
        )

    def _client(self) -> hvac.Client:
        if self._pid != os.getpid():  # forked behind the fork hooks' back
            self.after_fork()
        # Greenlets share the loop's thread: each bridged read needs a client of its own.
        own = greenlet_local(self, self._spare_client, self._spare.append)
        if own is not None:
            return own
        client: hvac.Client | None = getattr(self._local, "client", None)
        if client is None:
            client = self._new_client()
            self._local.client = client
        return client

    def prepare(self) -> None:
        """Import what requests need (hvac takes ~0.1 s) and make the connection pool,
        so no read pays for them on an event loop."""
        import hvac  # noqa: F401

        from . import _vault_transport  # noqa: F401

        self._shared_pool().prepare_wires()  # their TLS context reads the CA bundle

    def close_loop_connections(self) -> None:
        """Close the running event loop's idle connections (async reads')."""
        if self._pool is not None:
            self._pool.close_wire()

    def _spare_client(self) -> hvac.Client:
        """A client for one bridged read: one a finished read gave back, or a new one."""
        try:
            return self._spare.pop()
        except IndexError:
            return self._new_client()

    def _tls_settings(self) -> tuple[bool | str, tuple[str, str] | str | tuple[()]]:
        """``verify`` and ``cert`` as requests and hvac take them."""
        s = self._settings
        verify: bool | str = s.ca_cert if s.ca_cert else s.verify
        cert: tuple[str, str] | str | tuple[()] = ()  # () not None: hvac would read env
        if s.client_cert is not None:
            cert = (s.client_cert, s.client_key) if s.client_key else s.client_cert
        return verify, cert

    def _shared_pool(self) -> Pools:
        """The connection pool every thread's client shares, made on first use."""
        import requests

        from ._vault_http import make_pool

        with self._pool_lock:
            if self._pool is None:
                verify, cert = self._tls_settings()
                self._pool = make_pool(self._settings.url, verify=verify, cert=cert)
                # hvac gives each client a requests.Session of its own (some 80 objects
                # for the collector to walk, per thread and per async read in flight)
                # that secureml's adapter never sends through: they share one, set up
                # as hvac would set up its own.
                self._session_stub = requests.Session()
                self._session_stub.verify, self._session_stub.cert = verify, cert
                self._session_stub.proxies = {}
            return self._pool

    def _new_client(self) -> hvac.Client:
        try:
            import hvac

            from ._vault_transport import PolicyAdapter
        except ImportError:  # pragma: no cover - the manager checks this up front
            raise ConfigurationError(f"hvac is not installed: {INSTALL_HINT}") from None

        s = self._settings
        verify, cert = self._tls_settings()
        self._shared_pool()
        return hvac.Client(
            session=self._session_stub,
            url=s.url,
            token="",  # never hvac's own VAULT_TOKEN / ~/.vault-token lookup
            namespace=s.namespace,
            verify=verify,  # always explicit: hvac would read VAULT_SKIP_VERIFY & co
            cert=cert,
            timeout=s.timeout,
            allow_redirects=False,
            adapter=PolicyAdapter,
            retries=s.retries,
            addresses=self._addresses,
            consistency=self._consistency,
            pool=self._pool,
        )

    def __repr__(self) -> str:
        return (
            f"VaultBackend(url={self._settings.url!r}, auth={self._settings.auth.method!r}, "
            f"mount={self._mount!r}, path={self._path!r})"
        )
