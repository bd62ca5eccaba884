"""A versioned secret store in memory: the VersionedSecretBackend Protocol is all a store
needs to implement (unit tests of the manager's policy, without a server)."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone

from secureml.key_management import KeyVersion, VersionConflictError
from secureml.key_management.backends import SecretMetadata
from secureml.key_management.backends.base import SecretValue

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


class MemoryVersions:
    """A versioned backend in memory: the Protocol is all a store needs to implement."""

    source = "memory"

    def __init__(self, max_versions: int = 10) -> None:
        self.data: dict[str, dict[int, SecretValue]] = {}
        self.records: dict[str, dict[int, KeyVersion]] = {}
        self.labels: dict[str, dict[str, str]] = {}
        self.max_versions = max_versions
        self.clock = T0
        self.lock = threading.Lock()

    def locate(self, name: str) -> str:
        return f"memory:{name}"

    def get(self, name: str, version: int | None = None) -> SecretValue | None:
        records = self.records.get(name, {})
        number = version or max(records, default=0)
        record = records.get(number)
        if record is None or not record.live:
            return None
        return self.data[name][number]

    def get_latest(self, name: str) -> tuple[SecretValue, int] | None:
        number = max(self.records.get(name, {}), default=0)
        value = self.get(name, number) if number else None
        return None if value is None else (value, number)

    def put(self, name: str, value: SecretValue) -> None:
        self.put_version(name, value)

    def delete(self, name: str) -> None:
        self.destroy_all(name)

    def put_version(self, name: str, value: SecretValue, *, cas: int | None = None) -> int:
        with self.lock:
            records = self.records.setdefault(name, {})
            current = max(records, default=0)
            if cas is not None and cas != current:
                raise VersionConflictError(f"{name} is no longer at version {cas}")
            number = current + 1
            self.clock += timedelta(days=1)
            records[number] = KeyVersion(number, self.clock, False, False, False)
            self.data.setdefault(name, {})[number] = value
            while len(records) > self.max_versions:
                del records[min(records)]
            return number

    def metadata(self, name: str) -> SecretMetadata | None:
        records = self.records.get(name)
        if records is None:
            return None
        current = max(records)
        return SecretMetadata(
            current_version=current,
            versions=tuple(
                KeyVersion(r.version, r.created_at, r.deleted, r.destroyed, r.version == current)
                for _, r in sorted(records.items())
            ),
            max_versions=self.max_versions,
            custom_metadata=self.labels.get(name, {}),
        )

    def set_custom_metadata(self, name: str, metadata: Mapping[str, str]) -> None:
        self.labels[name] = dict(metadata)

    def delete_versions(self, name: str, versions: Sequence[int] | None, *, destroy: bool) -> None:
        records = self.records.get(name, {})
        for number in versions or [max(records)]:
            old = records[number]
            records[number] = KeyVersion(
                number, old.created_at, old.deleted or not destroy, old.destroyed or destroy, False
            )

    def undelete_versions(self, name: str, versions: Sequence[int] | None) -> None:
        records = self.records.get(name, {})
        for number in versions or [max(records)]:
            old = records[number]
            if not old.destroyed:
                records[number] = KeyVersion(number, old.created_at, False, False, False)

    def destroy_all(self, name: str) -> None:
        self.records.pop(name, None)
        self.data.pop(name, None)

    def list_names(self, prefix: str = "") -> list[str]:
        return sorted(n for n in self.records if n.startswith(prefix))
