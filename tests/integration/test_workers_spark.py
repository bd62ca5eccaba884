"""secureml on Spark executors (issue 14): a KeyManagerSpec crosses in the closure, each
Python worker builds one manager from it (one AppRole login, counted in the real OpenBao
audit log) and encrypts its partitions with a column cipher; the driver decrypts.

pyspark in local mode (``local[2]``): two task slots, so two Python workers, reused
from task to task (``spark.python.worker.reuse``, on by default) and from job to job.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

pa = pytest.importorskip("pyarrow")
pd = pytest.importorskip("pandas")
pyspark = pytest.importorskip("pyspark")
cloudpickle = pytest.importorskip("cloudpickle")
if shutil.which("java") is None:
    pytest.skip("Spark needs Java 17+", allow_module_level=True)

from secureml.key_management import KeyManager, KeyManagerSpec  # noqa: E402
from tests.support.workers import AuditedServer, WorkerSetup, worker_setup  # noqa: E402

PARTITIONS = 16
ROWS = 8_000
SLOTS = 2
KEY = "pii"
SECRET_VAR = "WORKER_SECRET_ID"
EMAILS = [f"user{i:05d}@example.com" for i in range(ROWS)]

# pyspark 4 warns that it does not fully support pandas 3; what this module uses works.
pytestmark = pytest.mark.filterwarnings(
    "ignore:PySpark does not yet fully support pandas:FutureWarning"
)


@pytest.fixture(scope="module")
def setup(audited_bao: AuditedServer) -> WorkerSetup:
    return worker_setup(audited_bao, key=KEY, credential_env=SECRET_VAR)


@pytest.fixture(scope="module")
def spark(setup: WorkerSetup) -> Iterator[Any]:
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    # The secret id reaches the Python workers in their environment, as a cluster's
    # executors would get it. Through spark.executorEnv rather than this process's
    # environment: the JVM may already run (another module's session), and a reused JVM
    # starts its Python workers with the environment it was itself started with.
    session = (
        SparkSession.builder.master(f"local[{SLOTS}]")
        .appName("secureml-workers")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.bindAddress", "127.0.0.1")  # loopback only
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", str(SLOTS))
        .config("spark.python.worker.reuse", "true")
        .config(f"spark.executorEnv.{SECRET_VAR}", setup.role.secret_id)
        .getOrCreate()
    )
    try:
        yield session
    finally:
        session.stop()


def pandas_job(spec: KeyManagerSpec) -> Callable[[Iterator[Any]], Iterator[Any]]:
    """The mapInPandas function: its closure holds the spec and nothing else."""

    def encrypt(frames: Iterator[Any]) -> Iterator[Any]:
        import os

        import pandas as pd

        cipher = spec.manager().column_cipher("pii", column="email")
        for frame in frames:
            yield pd.DataFrame(
                {"id": frame["id"], "cell": cipher.encrypt(frame["email"]), "pid": os.getpid()}
            )

    return encrypt


def arrow_job(spec: KeyManagerSpec) -> Callable[[Iterator[Any]], Iterator[Any]]:
    """The mapInArrow function: its closure holds the spec and nothing else."""

    def encrypt(batches: Iterator[Any]) -> Iterator[Any]:
        import os

        import pyarrow as pa

        cipher = spec.manager().column_cipher("pii", column="email")
        for batch in batches:
            pids = pa.array([os.getpid()] * batch.num_rows, pa.int32())
            yield pa.RecordBatch.from_arrays(
                [batch.column("id"), cipher.encrypt(batch.column("email")), pids],
                names=["id", "cell", "pid"],
            )

    return encrypt


def _source(spark: Any) -> Any:
    rows = [(i, e) for i, e in enumerate(EMAILS)]
    return spark.createDataFrame(rows, "id long, email string").repartition(PARTITIONS)


def _check(rows: list[Any], root: KeyManager) -> set[int]:
    """Every row decrypts, in the driver, to its original value; the workers' pids."""
    assert len(rows) == ROWS
    rows = sorted(rows, key=lambda r: r.id)
    assert [r.id for r in rows] == list(range(ROWS))
    cells = [bytes(r.cell) for r in rows]
    assert all(e.encode() not in c for e, c in zip(EMAILS, cells, strict=True))
    cipher = root.column_cipher(KEY, column="email")
    assert cipher.decrypt(cells, text=True) == EMAILS
    return {r.pid for r in rows}


def test_the_shipped_closure_carries_no_credential(setup: WorkerSetup) -> None:
    for job in (pandas_job(setup.spec), arrow_job(setup.spec)):
        shipped = cloudpickle.dumps(job)
        assert setup.role.secret_id.encode() not in shipped
        assert setup.role.secret_id not in repr(setup.spec)
        assert SECRET_VAR.encode() in shipped  # the reference travels, not the value
        assert [c.cell_contents for c in job.__closure__ or ()] == [setup.spec]
    assert setup.spec.auth is not None
    assert setup.spec.auth.env == SECRET_VAR


def test_each_python_worker_logs_in_once(
    spark: Any, setup: WorkerSetup, audited_bao: AuditedServer
) -> None:
    assert audited_bao.logins(setup.role.mount, settle=0) == 0
    source = _source(spark)
    assert source.rdd.getNumPartitions() == PARTITIONS

    out = source.mapInPandas(pandas_job(setup.spec), "id long, cell binary, pid int")
    pids = _check(out.collect(), setup.root)
    # 16 partitions on 2 slots: 2 Python workers, each reused for its tasks, each with
    # one manager and so one login.
    assert len(pids) == SLOTS
    assert audited_bao.logins(setup.role.mount) == len(pids)

    out = source.mapInArrow(arrow_job(setup.spec), "id long, cell binary, pid int")
    pids |= _check(out.collect(), setup.root)
    # The next job runs on the same workers, whose managers are already logged in.
    assert len(pids) == SLOTS
    assert audited_bao.logins(setup.role.mount) == SLOTS
    assert audited_bao.failed_logins(setup.role.mount) == 0
