"""Secrets in a HashiCorp Vault or OpenBao KV engine (v1 or v2), through hvac.

Layout: secret ``name`` lives at ``<mount>/<path>/<name>`` in the field ``value``, so
``bao kv put -mount=secret secureml/api_key value=abc`` is what ``get("api_key")``
reads. Bytes are stored as base64 text with a sibling field ``encoding=base64``. A
secret with several fields and no ``value`` is returned whole, as a dict.

Every hvac and requests exception is translated here, in :meth:`VaultBackend._errors`,
so no hvac type reaches users.
"""

from __future__ import annotations

import base64
import binascii
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NoReturn

from .._config import INSTALL_HINT, VaultSettings
from ..errors import (
    AuthenticationError,
    ConfigurationError,
    KeyFormatError,
    PermissionDeniedError,
    UnsupportedOperationError,
    VaultError,
    VaultSealedError,
    VaultUnavailableError,
)
from .base import SecretValue

if TYPE_CHECKING:
    import hvac

VALUE_FIELD = "value"
ENCODING_FIELD = "encoding"


def pack_fields(value: SecretValue) -> dict[str, Any]:
    """The KV fields that store ``value`` (see the module docstring for the layout)."""
    if isinstance(value, str):
        return {VALUE_FIELD: value}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {VALUE_FIELD: base64.b64encode(value).decode("ascii"), ENCODING_FIELD: "base64"}
    return dict(value)


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


class VaultBackend:
    """A Vault / OpenBao KV engine as a :class:`~.base.SecretBackend`.

    The KV version is detected from the mount on first use (through
    ``sys/internal/ui/mounts``, which least-privilege tokens may read for their own
    paths) unless ``kv_version`` is given. Each thread gets its own hvac client, because
    a ``requests.Session`` was never promised to be thread-safe.

    Args:
        settings: Where Vault is and the token to use.
        mount: The KV engine's mount path (``secret`` by default in Vault and OpenBao).
        path: The folder under the mount that holds secureml's secrets.
        kv_version: 1 or 2 to skip detection; ``None`` to detect.

    Example:
        >>> backend = VaultBackend(VaultSettings("http://127.0.0.1:8200", token="..."))
        >>> backend.locate("api_key")
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
        self._detect_lock = threading.Lock()
        self._local = threading.local()

    @property
    def source(self) -> str:
        return "vault"

    @property
    def settings(self) -> VaultSettings:
        """The connection settings (their ``repr`` hides the token)."""
        return self._settings

    def locate(self, name: str) -> str:
        return f"vault:{self._mount}/{self._secret_path(name)}"

    def _secret_path(self, name: str) -> str:
        return f"{self._path}/{name}" if self._path else name

    # -- I/O -------------------------------------------------------------------------

    def get(self, name: str, version: int | None = None) -> SecretValue | None:
        import hvac.exceptions

        where = self.locate(name)
        kv = self.kv_version()
        client = self._client()
        with self._errors("read", where):
            try:
                if kv == 2:
                    response = client.secrets.kv.v2.read_secret_version(
                        path=self._secret_path(name),
                        version=version,
                        mount_point=self._mount,
                        raise_on_deleted_version=True,
                    )
                    fields = response["data"]["data"]
                else:
                    if version is not None:
                        raise UnsupportedOperationError(
                            f"{where} is on a KV v1 mount, which keeps no versions"
                        )
                    response = client.secrets.kv.v1.read_secret(
                        path=self._secret_path(name), mount_point=self._mount
                    )
                    fields = response["data"]
            except hvac.exceptions.InvalidPath:
                return None
        if fields is None:
            return None
        return unpack_fields(fields, where)

    def put(self, name: str, value: SecretValue) -> None:
        fields = pack_fields(value)
        kv = self.kv_version()
        client = self._client()
        with self._errors("write", self.locate(name)):
            engine = client.secrets.kv.v2 if kv == 2 else client.secrets.kv.v1
            engine.create_or_update_secret(
                path=self._secret_path(name), secret=fields, mount_point=self._mount
            )

    def delete(self, name: str) -> None:
        kv = self.kv_version()
        client = self._client()
        with self._errors("delete", self.locate(name)):
            if kv == 2:
                client.secrets.kv.v2.delete_latest_version_of_secret(
                    path=self._secret_path(name), mount_point=self._mount
                )
            else:
                client.secrets.kv.v1.delete_secret(
                    path=self._secret_path(name), mount_point=self._mount
                )

    def kv_version(self) -> int:
        """The mount's KV version (1 or 2), detected once and remembered."""
        if self._kv_version is None:
            with self._detect_lock:
                if self._kv_version is None:
                    self._kv_version = self._detect_kv_version()
        return self._kv_version

    def _detect_kv_version(self) -> int:
        probe = f"{self._mount}/{self._path}".rstrip("/")
        with self._errors("detect the KV version of", f"vault:{self._mount}/"):
            response = self._client().adapter.get(f"/v1/sys/internal/ui/mounts/{probe}")
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

    # -- plumbing --------------------------------------------------------------------

    def _client(self) -> hvac.Client:
        client: hvac.Client | None = getattr(self._local, "client", None)
        if client is None:
            try:
                import hvac
            except ImportError:  # pragma: no cover - the manager checks this up front
                raise ConfigurationError(f"hvac is not installed: {INSTALL_HINT}") from None
            s = self._settings
            client = hvac.Client(
                url=s.url,
                token=s.token,
                namespace=s.namespace,
                # Always explicit, so hvac never reads VAULT_SKIP_VERIFY behind our back.
                verify=s.ca_cert if s.ca_cert else True,
                timeout=s.timeout,
                # requests would resend X-Vault-Token to whatever host a redirect names.
                allow_redirects=False,
            )
            self._local.client = client
        return client

    @contextmanager
    def _errors(self, action: str, where: str) -> Iterator[None]:
        """Translate hvac/requests exceptions into our hierarchy, naming ``where``."""
        import hvac.exceptions as hx
        import requests

        url = self._settings.url
        try:
            yield
        except hx.Forbidden as exc:
            self._raise_forbidden(action, where, exc)
        except (hx.Unauthorized, hx.InvalidRequest) as exc:
            if isinstance(exc, hx.Unauthorized):
                raise AuthenticationError(
                    f"Vault at {url} rejected the token while trying to {action} {where}"
                ) from exc
            raise VaultError(
                f"Vault at {url} refused to {action} {where}: {_vault_errors(exc)}"
            ) from exc
        except hx.VaultDown as exc:
            if "sealed" in _vault_errors(exc).lower():
                raise VaultSealedError(
                    f"Vault at {url} is sealed; cannot {action} {where}"
                ) from exc
            raise VaultUnavailableError(
                f"Vault at {url} is unavailable (503); cannot {action} {where}"
            ) from exc
        except (
            hx.InternalServerError,
            hx.BadGateway,
            hx.RateLimitExceeded,
            hx.VaultNotInitialized,
            hx.UnexpectedError,
        ) as exc:
            raise VaultUnavailableError(
                f"Vault at {url} failed to {action} {where}: {type(exc).__name__}"
            ) from exc
        except requests.exceptions.SSLError as exc:
            # Not "unavailable": a failed TLS check may be an attack, so no fallback.
            raise VaultError(
                f"TLS verification of Vault at {url} failed; set vault_ca_cert= to the CA "
                "that signed its certificate"
            ) from exc
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
            raise VaultUnavailableError(
                f"Vault at {url} is unreachable ({type(exc).__name__}); cannot {action} {where}"
            ) from exc
        except requests.exceptions.JSONDecodeError as exc:
            raise VaultError(
                f"Vault at {url} answered {action} of {where} with something that is not "
                "Vault's JSON (a proxy or redirect?)"
            ) from exc

    def _raise_forbidden(self, action: str, where: str, exc: Exception) -> NoReturn:
        """403 means a bad token or a policy refusal; ask Vault which, to say so."""
        import hvac.exceptions as hx

        url = self._settings.url
        try:
            self._client().auth.token.lookup_self()
        except hx.Forbidden:
            raise AuthenticationError(
                f"Vault at {url} rejected the token (invalid, expired or revoked) while "
                f"trying to {action} {where}"
            ) from exc
        except Exception:  # noqa: S110 - the original 403 is the error to report
            pass
        raise PermissionDeniedError(
            f"Vault at {url} denied permission to {action} {where}: the token's policies "
            "do not allow it (or the mount does not exist)"
        ) from exc

    def __repr__(self) -> str:
        return (
            f"VaultBackend(url={self._settings.url!r}, mount={self._mount!r}, path={self._path!r})"
        )


def _vault_errors(exc: Exception) -> str:
    """Vault's own error strings, which name paths and problems, never secret values."""
    errors = getattr(exc, "errors", None) or []
    text = "; ".join(str(e) for e in errors) if isinstance(errors, list) else str(errors)
    return text.strip()[:300] or "no detail given"
