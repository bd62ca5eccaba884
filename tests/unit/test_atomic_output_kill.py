"""atomic_output leaves nothing behind, even when its process is killed outright.

On Linux the output is written to an unnamed file (O_TMPFILE) and named only once it
is complete, so a SIGKILL mid-write, which no handler can catch, leaves no hidden
``.part`` file of plaintext. Where that is impossible the named temporary still works.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from secureml.key_management import _files, atomic_output

_SRC = str(Path(_files.__file__).resolve().parents[2])
_LINUX = sys.platform == "linux"
linux_only = pytest.mark.skipif(not _LINUX, reason="O_TMPFILE is Linux-only")

# The file systems that matter here: pytest's tmp_path, /tmp, the work tree's /work, and
# a tmpfs (/dev/shm), which is a file system of its own even where the rest is one disk.
_ROOTS = ["tmp_path", "/tmp", "/work", "/dev/shm"]


def _file_system(folder: Path) -> str:
    """The type of the file system holding ``folder`` (from mountinfo), for messages."""
    best, kind = "", "unknown"
    with contextlib.suppress(OSError), open("/proc/self/mountinfo") as mounts:
        for line in mounts:
            fields = line.split()
            point, fs_type = fields[4], fields[fields.index("-") + 1]
            inside = str(folder) == point or str(folder).startswith(point.rstrip("/") + "/")
            if inside and len(point) >= len(best):
                best, kind = point, fs_type
    return kind


@pytest.fixture(params=_ROOTS)
def folder(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """An empty folder on each file system of interest."""
    if request.param == "tmp_path":
        yield tmp_path
        return
    root = Path(request.param)
    if not root.is_dir() or not os.access(root, os.W_OK | os.X_OK):
        pytest.skip(f"{root} is not a writable folder on this machine")
    made = Path(tempfile.mkdtemp(prefix=".secureml-kill-test-", dir=root))
    try:
        yield made
    finally:
        shutil.rmtree(made, ignore_errors=True)


def _require_unnamed(folder: Path) -> None:
    if not _LINUX:
        pytest.skip("O_TMPFILE is Linux-only")
    if _files._probe(folder) is None:
        pytest.skip(
            f"the {_file_system(folder)} file system of {folder} cannot create and link "
            "an O_TMPFILE here"
        )


@pytest.fixture
def fresh_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget what earlier tests learnt about each device."""
    monkeypatch.setattr(_files, "_linker_by_device", {})


_CHILD = textwrap.dedent(
    """
    import os, sys, time
    sys.path.insert(0, {src!r})
    from secureml.key_management import atomic_output

    with atomic_output({dst!r}, durable={durable!r}) as out:
        for _ in range(8):
            out.write(os.urandom(1 << 20))
        sys.stdout.write("writing\\n")
        sys.stdout.flush()
        time.sleep(120)
    """
)


def _kill_mid_write(dst: Path, *, durable: bool = False) -> list[str]:
    """Names in ``dst``'s folder while a child is mid-write; then SIGKILL it."""
    code = _CHILD.format(src=_SRC, dst=str(dst), durable=durable)
    with subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as child:
        try:
            assert child.stdout is not None
            ready, _, _ = select.select([child.stdout], [], [], 60)
            line = child.stdout.readline() if ready else b""
            assert line == b"writing\n", child.stderr.read() if child.stderr else line
            during = sorted(p.name for p in dst.parent.iterdir())
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(30)
    assert child.returncode == -signal.SIGKILL
    return during


# --- the point: SIGKILL mid-write -------------------------------------------------------


def test_a_killed_writer_leaves_no_file_at_all(folder: Path) -> None:
    _require_unnamed(folder)
    during = _kill_mid_write(folder / "model.sml")
    assert during == [], "the output had a name while it was written"
    assert sorted(p.name for p in folder.iterdir()) == []


def test_a_killed_writer_leaves_an_existing_destination_as_it_was(folder: Path) -> None:
    _require_unnamed(folder)
    target = folder / "model.sml"
    target.write_bytes(b"previous")
    assert _kill_mid_write(target, durable=True) == ["model.sml"]
    assert sorted(p.name for p in folder.iterdir()) == ["model.sml"]
    assert target.read_bytes() == b"previous"


# --- everything else still works, on the unnamed path -----------------------------------


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _write_then(target: Path, then: Callable[[], object]) -> None:
    """Write some output to ``target``, then call ``then`` inside the block."""
    with atomic_output(target) as out:
        out.write(b"partial")
        then()


def _raiser(error: BaseException) -> Callable[[], object]:
    def fail() -> object:
        raise error

    return fail


def test_complete_output_appears_whole_with_mode_0600(folder: Path) -> None:
    _require_unnamed(folder)
    target = folder / "out.bin"
    with atomic_output(target) as out:
        assert _names(folder) == []  # unnamed while written
        out.write(b"all or ")
        out.write(b"nothing")
    assert target.read_bytes() == b"all or nothing"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert _names(folder) == ["out.bin"]


def test_the_yielded_file_is_an_unbuffered_binary_file(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    with atomic_output(target) as out:
        assert out.mode == "wb"
        assert out.write(b"x") == 1
        assert os.fstat(out.fileno()).st_size == 1  # unbuffered: already written
        assert out.writable()
        assert not out.readable()
    assert out.closed


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_an_error_or_interrupt_leaves_nothing(folder: Path, error: BaseException) -> None:
    _require_unnamed(folder)
    target = folder / "out.bin"
    with pytest.raises(type(error)):
        _write_then(target, _raiser(error))
    assert _names(folder) == []


def test_an_error_leaves_an_existing_destination_as_it_was(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"previous")
    with pytest.raises(RuntimeError):
        _write_then(target, _raiser(RuntimeError()))
    assert target.read_bytes() == b"previous"
    assert _names(tmp_path) == ["out.bin"]


def test_an_existing_destination_is_replaced(folder: Path) -> None:
    _require_unnamed(folder)
    target = folder / "out.bin"
    target.write_bytes(b"previous, and longer than the new content")
    target.chmod(0o644)
    before = target.stat().st_ino
    with atomic_output(target) as out:
        out.write(b"new")
    assert target.read_bytes() == b"new"
    assert target.stat().st_ino != before  # a new file renamed in, never rewritten in place
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert _names(folder) == ["out.bin"]


def test_a_symlink_destination_is_replaced_by_the_output(tmp_path: Path) -> None:
    real = tmp_path / "real.bin"
    real.write_bytes(b"previous")
    link = tmp_path / "link.bin"
    link.symlink_to(real)
    with atomic_output(link) as out:
        out.write(b"new")
    assert not link.is_symlink()
    assert link.read_bytes() == b"new"
    assert real.read_bytes() == b"previous"


def test_durable_output_syncs_the_file_then_the_folder(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _require_unnamed(folder)
    synced: list[tuple[str, bool]] = []
    real_fsync = os.fsync
    target = folder / "out.bin"

    def fsync(fd: int) -> None:
        kind = "folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        synced.append((kind, target.exists()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with atomic_output(target, durable=True) as out:
        out.write(b"durable")
    assert synced == [("file", False), ("folder", True)]
    assert target.read_bytes() == b"durable"
    assert _names(folder) == ["out.bin"]


@pytest.mark.parametrize("name", ["n" * 255, "\U0001f600" * 63], ids=["ascii", "utf8"])
def test_a_destination_name_as_long_as_the_file_system_allows(folder: Path, name: str) -> None:
    _require_unnamed(folder)
    target = folder / name
    with atomic_output(target) as out:
        out.write(b"whole")
    assert target.read_bytes() == b"whole"
    assert _names(folder) == [name]


def test_a_special_destination_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a regular file"), atomic_output(tmp_path):
        pass
    with pytest.raises(ValueError, match="not a regular file"), atomic_output(os.devnull):
        pass
    assert _names(tmp_path) == []


def test_a_failed_rename_removes_the_linked_name(tmp_path: Path) -> None:
    _require_unnamed(tmp_path)
    target = tmp_path / "out.bin"
    with pytest.raises(IsADirectoryError):
        _write_then(target, target.mkdir)  # now the rename over it fails, after the link
    assert _names(tmp_path) == ["out.bin"]
    assert target.is_dir()


def test_an_interrupt_between_link_and_rename_removes_the_linked_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _require_unnamed(tmp_path)

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _write_then(tmp_path / "out.bin", lambda: None)
    assert _names(tmp_path) == []


def test_a_missing_folder_fails_as_before(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError), atomic_output(tmp_path / "nowhere" / "out.bin"):
        pass


def test_concurrent_first_outputs_to_a_device_all_work(tmp_path: Path, fresh_probe: None) -> None:
    errors: list[BaseException] = []

    def write(index: int) -> None:
        try:
            with atomic_output(tmp_path / f"out-{index}") as out:
                out.write(str(index).encode())
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert all((tmp_path / f"out-{i}").read_bytes() == str(i).encode() for i in range(16))
    assert len(_names(tmp_path)) == 16


# --- the probe: once per device, and its fallbacks ---------------------------------------


@linux_only
def test_the_probe_runs_once_per_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_probe: None
) -> None:
    calls: list[Path] = []
    real_probe = _files._probe

    def probe(folder: Path) -> _files._Linker | None:
        calls.append(folder)
        return real_probe(folder)

    monkeypatch.setattr(_files, "_probe", probe)
    for index in range(3):
        (tmp_path / str(index)).mkdir()
        with atomic_output(tmp_path / str(index) / "out") as out:
            out.write(b"x")
    assert calls == [tmp_path / "0"]
    assert list(_files._linker_by_device) == [tmp_path.stat().st_dev]


def _watch_for_part(folder: Path) -> Callable[[], bool]:
    return lambda: any(p.name.endswith(".part") for p in folder.iterdir())


@pytest.mark.parametrize("name", ["out.bin", "n" * 255])
def test_the_named_fallback_still_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_probe: None, name: str
) -> None:
    monkeypatch.setattr(_files, "_probe", lambda folder: None)
    target = tmp_path / name
    target.write_bytes(b"previous")
    with atomic_output(target, durable=True) as out:
        out.write(b"named")
        assert _watch_for_part(tmp_path)()  # the named temporary is what is written
        assert stat.S_IMODE(os.fstat(out.fileno()).st_mode) == 0o600
    assert target.read_bytes() == b"named"
    assert _names(tmp_path) == [name]
    with pytest.raises(RuntimeError):
        _write_then(target, _raiser(RuntimeError()))
    assert target.read_bytes() == b"named"
    assert _names(tmp_path) == [name]


def test_other_platforms_keep_the_named_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_files, "sys", types.SimpleNamespace(platform="darwin"))
    with atomic_output(tmp_path / "out.bin") as out:
        out.write(b"x")
        assert _watch_for_part(tmp_path)()
    assert _names(tmp_path) == ["out.bin"]


def _refuse_tmpfile(code: int, monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = os.open

    def fake_open(path: object, flags: int, *args: object, **kwargs: object) -> int:
        if flags & os.O_TMPFILE == os.O_TMPFILE:
            raise OSError(code, os.strerror(code))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)


@linux_only
@pytest.mark.parametrize("code", [errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT])
def test_a_file_system_without_o_tmpfile_falls_back_and_is_remembered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_probe: None, code: int
) -> None:
    _refuse_tmpfile(code, monkeypatch)
    with atomic_output(tmp_path / "out.bin") as out:
        out.write(b"x")
        assert _watch_for_part(tmp_path)()
    assert (tmp_path / "out.bin").read_bytes() == b"x"
    assert _files._linker_by_device == {tmp_path.stat().st_dev: None}


@linux_only
def test_a_folder_refusing_o_tmpfile_for_its_own_reasons_is_not_held_against_the_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_probe: None
) -> None:
    _refuse_tmpfile(errno.ENOSPC, monkeypatch)
    with atomic_output(tmp_path / "out.bin") as out:
        out.write(b"x")
    assert (tmp_path / "out.bin").read_bytes() == b"x"
    assert _files._linker_by_device == {}  # asked again next time


def _failing_linker(code: int) -> _files._Linker:
    def link(fd: int, dirfd: int, name: str) -> None:
        raise OSError(code, os.strerror(code), name)

    return link


@linux_only
def test_when_no_link_works_the_named_fallback_is_used_and_remembered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_probe: None
) -> None:
    # As on this machine before the fix: linkat through /proc failing with EXDEV.
    links = (_failing_linker(errno.EXDEV), _failing_linker(errno.ENOENT))
    monkeypatch.setattr(_files, "_LINKERS", links)
    with atomic_output(tmp_path / "out.bin") as out:
        out.write(b"x")
        assert _watch_for_part(tmp_path)()
    assert _names(tmp_path) == ["out.bin"]
    assert _files._linker_by_device == {tmp_path.stat().st_dev: None}


@linux_only
def test_an_unexpected_link_failure_is_not_remembered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_probe: None
) -> None:
    links = (_failing_linker(errno.EXDEV), _failing_linker(errno.EDQUOT))
    monkeypatch.setattr(_files, "_LINKERS", links)
    with atomic_output(tmp_path / "out.bin") as out:
        out.write(b"x")
    assert _names(tmp_path) == ["out.bin"]
    assert _files._linker_by_device == {}


def _empty_path_works(folder: Path) -> bool:
    fd = os.open(folder, os.O_TMPFILE | os.O_WRONLY, 0o600)
    dirfd = os.open(folder, os.O_RDONLY)
    try:
        _files._link_empty_path(fd, dirfd, "probe")
    except OSError:
        return False
    else:
        os.unlink(folder / "probe")
        return True
    finally:
        os.close(fd)
        os.close(dirfd)


@linux_only
def test_without_proc_the_at_empty_path_link_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_probe: None
) -> None:
    _require_unnamed(tmp_path)
    if not _empty_path_works(tmp_path):
        pytest.skip("linkat(AT_EMPTY_PATH) needs CAP_DAC_READ_SEARCH, which this process lacks")
    links = (_failing_linker(errno.ENOENT), _files._link_empty_path)  # no /proc mounted
    monkeypatch.setattr(_files, "_LINKERS", links)
    with atomic_output(tmp_path / "out.bin") as out:
        out.write(b"x")
        assert _names(tmp_path) == []
    assert (tmp_path / "out.bin").read_bytes() == b"x"
    assert _files._linker_by_device == {tmp_path.stat().st_dev: _files._link_empty_path}


@linux_only
def test_the_proc_link_is_preferred_and_follows_the_magic_link(tmp_path: Path) -> None:
    """os.link without a dir_fd calls link(2), which does not follow /proc/self/fd/N on
    Linux and fails with EXDEV: the cause of the earlier failure on this machine."""
    _require_unnamed(tmp_path)
    if not Path(f"/proc/{os.getpid()}/fd").is_dir():
        pytest.skip("/proc is not mounted here")
    assert _files._probe(tmp_path) is _files._link_via_proc
    fd = os.open(tmp_path, os.O_TMPFILE | os.O_WRONLY, 0o600)
    try:
        os.write(fd, b"linked")
        if sys.version_info < (3, 14):
            with pytest.raises(OSError, match="cross-device") as caught:
                os.link(f"/proc/self/fd/{fd}", tmp_path / "plain")
            assert caught.value.errno == errno.EXDEV
        dirfd = os.open(tmp_path, os.O_RDONLY)
        try:
            _files._link_via_proc(fd, dirfd, "linked")
        finally:
            os.close(dirfd)
    finally:
        os.close(fd)
    assert (tmp_path / "linked").read_bytes() == b"linked"


@pytest.mark.parametrize("unnamed", [True, False], ids=["unnamed", "named"])
def test_a_child_forked_inside_never_publishes_the_parents_output(
    tmp_path: Path, unnamed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    import secureml.key_management._files as files

    if not unnamed:
        monkeypatch.setattr(files, "_open_unnamed", lambda folder: None)
    dst = tmp_path / "out.bin"
    pid = -1
    status = -1
    try:
        with files.atomic_output(dst) as out:
            out.write(b"first half of the plaintext ")
            pid = os.fork()
            if pid:  # the parent waits until the child has tried to publish, then fails
                status = os.waitpid(pid, 0)[1]
                raise OSError("the parent's failure")
            # The child falls through: it leaves the block as if all went well.
    except RuntimeError as refused:
        if pid == 0:
            os._exit(0 if "forked inside" in str(refused) else 1)
        raise
    except OSError:
        if pid == 0:
            os._exit(3)
    else:
        if pid == 0:
            os._exit(2)  # the child published: the bug
    assert os.waitstatus_to_exitcode(status) == 0  # the child was refused
    assert not dst.exists()
    assert list(tmp_path.iterdir()) == []


def test_the_owner_check() -> None:
    from secureml.key_management._files import _require_owner

    _require_owner(os.getpid())
    with pytest.raises(RuntimeError, match="forked inside the with block"):
        _require_owner(os.getpid() + 1)
