"""secureml on Dask workers (issue 14): a KeyManagerSpec crosses in the task's closure,
each worker process builds one manager from it (one AppRole login, counted in the real
OpenBao audit log, however many of its threads run tasks at once) and encrypts its
partitions with a column cipher; the client decrypts.

A ``LocalCluster`` of two worker processes with two threads each; the secret id reaches
the workers in their environment, set before the cluster starts.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

pd = pytest.importorskip("pandas")
cloudpickle = pytest.importorskip("cloudpickle")
distributed = pytest.importorskip("distributed")

from secureml.key_management import KeyManager, KeyManagerSpec  # noqa: E402
from tests.support.workers import AuditedServer, WorkerSetup, worker_setup  # noqa: E402

PARTITIONS = 16
PER_PARTITION = 500
ROWS = PARTITIONS * PER_PARTITION
WORKERS = 2
THREADS = 2
KEY = "pii"
SECRET_VAR = "WORKER_SECRET_ID"
EMAILS = [f"user{i:05d}@example.com" for i in range(ROWS)]
Part = tuple[list[int], list[str]]


@pytest.fixture(scope="module")
def setup(audited_bao: AuditedServer) -> WorkerSetup:
    return worker_setup(audited_bao, key=KEY, credential_env=SECRET_VAR)


@pytest.fixture(scope="module")
def client(setup: WorkerSetup) -> Iterator[Any]:
    # Worker processes are spawned with this process's environment: set it first.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(SECRET_VAR, setup.role.secret_id)
        cluster = distributed.LocalCluster(
            n_workers=WORKERS,
            threads_per_worker=THREADS,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            scheduler_port=0,
            worker_dashboard_address=None,
            silence_logs=logging.ERROR,
        )
    try:
        with distributed.Client(cluster) as dask_client:
            dask_client.wait_for_workers(WORKERS, timeout=30)
            yield dask_client
    finally:
        cluster.close(timeout=30)


def partition_job(spec: KeyManagerSpec) -> Callable[[Part], tuple[list[int], list[bytes], int]]:
    """The task for client.map: its closure holds the spec and nothing else."""

    def encrypt(part: Part) -> tuple[list[int], list[bytes], int]:
        import os

        ids, emails = part
        cipher = spec.manager().column_cipher("pii", column="email")
        return ids, cipher.encrypt(emails), os.getpid()

    return encrypt


def frame_job(spec: KeyManagerSpec) -> Callable[[Any], Any]:
    """The function for dask.dataframe's map_partitions: the spec in its closure."""

    def encrypt(frame: Any) -> Any:
        import os

        import pandas as pd

        cipher = spec.manager().column_cipher("pii", column="email")
        cells = cipher.encrypt(frame["email"])
        return pd.DataFrame(
            {"id": frame["id"], "cell": cells.astype(object), "pid": os.getpid()},
            index=frame.index,
        )

    return encrypt


def _parts() -> list[Part]:
    return [
        (
            list(range(p * PER_PARTITION, (p + 1) * PER_PARTITION)),
            EMAILS[p * PER_PARTITION : (p + 1) * PER_PARTITION],
        )
        for p in range(PARTITIONS)
    ]


def _check(ids: list[int], cells: list[bytes], root: KeyManager) -> None:
    """Every row decrypts, in the client, to its original value."""
    order = sorted(range(len(ids)), key=ids.__getitem__)
    assert [ids[i] for i in order] == list(range(ROWS))
    cells = [cells[i] for i in order]
    assert all(e.encode() not in c for e, c in zip(EMAILS, cells, strict=True))
    assert root.column_cipher(KEY, column="email").decrypt(cells, text=True) == EMAILS


def test_the_shipped_closure_carries_no_credential(setup: WorkerSetup) -> None:
    for job in (partition_job(setup.spec), frame_job(setup.spec)):
        shipped = cloudpickle.dumps(job)
        assert setup.role.secret_id.encode() not in shipped
        assert SECRET_VAR.encode() in shipped  # the reference travels, not the value
        assert [c.cell_contents for c in job.__closure__ or ()] == [setup.spec]


def test_each_worker_process_logs_in_once(
    client: Any, setup: WorkerSetup, audited_bao: AuditedServer
) -> None:
    assert audited_bao.logins(setup.role.mount, settle=0) == 0
    worker_pids = set(client.run(os.getpid).values())
    assert len(worker_pids) == WORKERS

    futures = client.map(partition_job(setup.spec), _parts(), pure=False)
    results = client.gather(futures)
    ids = [i for part_ids, _, _ in results for i in part_ids]
    cells = [c for _, part_cells, _ in results for c in part_cells]
    _check(ids, cells, setup.root)
    pids = {pid for _, _, pid in results}
    # 16 tasks over 2 processes of 2 threads: one manager, one login, per process.
    assert pids == worker_pids
    assert audited_bao.logins(setup.role.mount) == WORKERS


def test_a_dataframe_job_reuses_the_workers_managers(
    client: Any, setup: WorkerSetup, audited_bao: AuditedServer
) -> None:
    import dask.dataframe as dd

    frame = pd.DataFrame({"id": range(ROWS), "email": pd.Series(EMAILS, dtype=object)})
    source = dd.from_pandas(frame, npartitions=PARTITIONS)
    assert source.npartitions == PARTITIONS
    meta = pd.DataFrame(
        {
            "id": pd.Series(dtype="int64"),
            "cell": pd.Series(dtype=object),
            "pid": pd.Series(dtype="int64"),
        }
    )
    out = source.map_partitions(frame_job(setup.spec), meta=meta).compute()
    _check(out["id"].tolist(), out["cell"].tolist(), setup.root)
    assert set(out["pid"]) <= set(client.run(os.getpid).values())
    # After the client.map job, or alone: one login per worker process, no more.
    assert audited_bao.logins(setup.role.mount) == WORKERS
    assert audited_bao.failed_logins(setup.role.mount) == 0


def test_dask_reads_an_encrypted_parquet_dataset_through_a_secureml_url(
    client: Any, setup: WorkerSetup, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ``secureml::`` filesystem crosses to the workers as fsspec ships it (pickled,
    its manager as the spec: no credential in it); the workers decrypt the partitions."""
    pytest.importorskip("fsspec")
    import dask.dataframe as dd

    monkeypatch.setenv(SECRET_VAR, setup.role.secret_id)  # the client reads footers too
    folder = tmp_path / "users"
    folder.mkdir()
    writing = {"secureml": {"manager": setup.root, "key_name": KEY}}
    for p in range(4):
        part = pd.DataFrame(
            {"id": range(p * 100, (p + 1) * 100), "email": EMAILS[p * 100 : (p + 1) * 100]}
        )
        part.to_parquet(f"secureml::file://{folder}/part-{p}.parquet", storage_options=writing)
    assert all(b"user00001" not in f.read_bytes() for f in folder.iterdir())  # ciphertext
    frame = dd.read_parquet(
        f"secureml::file://{folder}",
        columns=["email"],
        storage_options={"secureml": {"manager": setup.spec}},
    )
    assert frame.npartitions == 4
    assert sorted(frame.compute()["email"]) == EMAILS[:400]
