"""The library boundary clears frame locals as an exception leaves (issue 12, finding 1);
the sweep against the real server is tests/integration/test_traceback_locals.py."""

from __future__ import annotations

import inspect
import threading
import time
import traceback
from collections.abc import Iterator

import pytest

from secureml.key_management import (
    AppRoleAuth,
    JWTAuth,
    KeyManager,
    KubernetesAuth,
    SecretNotFoundError,
    TokenAuth,
    TransitKeys,
    UserpassAuth,
)
from secureml.key_management._boundary import guarded, scrub
from tests.support.memory_backend import MemoryVersions


def _library_locals(error: BaseException) -> dict[str, object]:
    """The locals of the library's frames below the public method (whose own frame
    keeps the arguments that are not secret: the name asked for, ``self``)."""
    found: dict[str, object] = {}
    tb = error.__traceback__
    boundary = True
    while tb is not None:
        if "secureml" in tb.tb_frame.f_code.co_filename:
            if not boundary:
                found.update(tb.tb_frame.f_locals)
            boundary = False
        tb = tb.tb_next
    return found


@pytest.mark.parametrize(
    "cls", [KeyManager, TransitKeys, TokenAuth, AppRoleAuth, UserpassAuth, JWTAuth, KubernetesAuth]
)
def test_every_public_entry_point_scrubs(cls: type) -> None:
    for name, member in inspect.getmembers(cls):
        if name.startswith("_") and name != "__init__":
            continue
        static = inspect.getattr_static(cls, name)
        function = static.fget if isinstance(static, property) else member
        if not callable(function) or (name in dir(object) and name != "__init__"):
            continue
        scrubs = hasattr(function, "__wrapped__") or getattr(function, "__secureml_scrubs__", False)
        assert scrubs, f"{cls.__name__}.{name} lets frame locals out"


def test_a_failed_call_keeps_where_but_not_what() -> None:
    manager = KeyManager(backend=MemoryVersions(), use_env_fallback=False)
    with pytest.raises(SecretNotFoundError) as caught:
        manager.get_secret("absent")
    text = "".join(traceback.format_exception(caught.value))
    assert "_secrets.py" in text  # every frame is still named
    assert "_core.py" in text
    assert _library_locals(caught.value) == {}


def test_the_callers_own_exception_keeps_its_locals() -> None:
    manager = KeyManager(backend=MemoryVersions(), use_env_fallback=False)

    def users_code() -> None:
        mine = "the caller's local"  # noqa: F841 - what the caller's tracker should see
        raise RuntimeError("the caller's failure")

    handled: BaseException | None = None
    error: BaseException | None = None
    try:
        users_code()
    except RuntimeError as exc:
        handled = exc
        try:
            manager.get_secret("absent")
        except SecretNotFoundError as ours:
            error = ours
    assert error is not None
    assert error.__context__ is handled
    assert handled.__traceback__ is not None
    assert handled.__traceback__.tb_next is not None
    assert handled.__traceback__.tb_next.tb_frame.f_locals["mine"] == "the caller's local"


def _one_failed_load_seen_by_two_threads() -> tuple[BaseException, BaseException]:
    """The exceptions a leader and a follower get from one failing single-flight load."""
    release = threading.Event()
    started = threading.Event()

    class Slow(MemoryVersions):
        def get(self, name: str, version: int | None = None) -> object:  # type: ignore[override]
            started.set()
            release.wait(5)
            raise RuntimeError("backend broke")

    manager = KeyManager(backend=Slow(), use_env_fallback=False)
    errors: dict[str, BaseException] = {}

    def read(role: str) -> None:
        try:
            manager.get_secret("x")
        except BaseException as exc:  # whatever the call raised
            errors[role] = exc

    leader = threading.Thread(target=read, args=("leader",))
    leader.start()
    started.wait(5)
    follower = threading.Thread(target=read, args=("follower",))
    follower.start()
    time.sleep(0.2)  # the follower is waiting on the leader's load
    release.set()
    leader.join(5)
    follower.join(5)
    assert isinstance(errors["leader"], RuntimeError), errors  # the load failed, shared
    return errors["leader"], errors["follower"]


def test_a_waiter_on_a_failed_load_chains_nothing_of_the_loader() -> None:
    for error in _one_failed_load_seen_by_two_threads():
        assert _library_locals(error) == {}
        link: BaseException | None = error
        while link is not None:
            assert _library_locals(link) == {}
            link = link.__cause__ or link.__context__


def test_guarded_drops_its_own_arguments() -> None:
    @guarded
    def boom(secret: bytes) -> None:
        raise ValueError("no")

    try:
        boom(b"\x01secret-bytes")
    except ValueError as error:
        for _, name, value in _frames_with_locals(error):
            assert "secret-bytes" not in value, name
    else:  # pragma: no cover
        raise AssertionError


def _frames_with_locals(error: BaseException) -> list[tuple[str, str, str]]:
    summary = traceback.TracebackException.from_exception(error, capture_locals=True)
    return [
        (frame.name, name, value)
        for frame in summary.stack
        if "tests" not in frame.filename
        for name, value in (frame.locals or {}).items()
    ]


def test_scrub_skips_running_frames() -> None:
    try:
        raise ValueError("here")
    except ValueError as error:
        scrub(error)  # this frame is still running: left alone, no RuntimeError
        assert "error" in locals()


def test_the_leaders_exception_carries_no_follower_frames() -> None:
    leader, follower = _one_failed_load_seen_by_two_threads()
    assert leader is not follower
    names = [frame.name for frame in traceback.extract_tb(leader.__traceback__)]
    assert "result" not in names  # no frame of the follower's wait on the future


def test_the_callers_callbacks_keep_their_locals(tmp_path: object) -> None:
    import io

    manager = KeyManager(backend=MemoryVersions(), use_env_fallback=False)
    manager.generate_key("master_key")
    blob = manager.encrypt(b"x" * 100)

    def progress(done: int) -> None:
        mine = "the callback's local"  # noqa: F841 - what the caller's tracker should see
        raise RuntimeError("the caller's callback failed")

    with pytest.raises(RuntimeError) as caught:
        manager.decrypt_stream(io.BytesIO(blob), io.BytesIO(), progress=progress)
    frames = traceback.walk_tb(caught.value.__traceback__)
    callback = next(frame for frame, _ in frames if frame.f_code is progress.__code__)
    assert callback.f_locals["mine"] == "the callback's local"


def test_a_suspended_generator_is_never_closed() -> None:
    manager = KeyManager(backend=MemoryVersions(), use_env_fallback=False)

    def numbers() -> Iterator[int]:
        try:
            yield 1
            raise RuntimeError("inside the caller's generator")
        except RuntimeError:
            yield 2  # suspended inside the handler: its frame is in a stored traceback
        yield 3

    counting = numbers()
    assert next(counting) == 1
    assert next(counting) == 2
    try:
        manager.get_secret("absent")  # raised while the generator's exception is alive
    except SecretNotFoundError as error:
        scrub(error)
    assert next(counting) == 3  # not closed


def test_the_public_vault_backend_scrubs() -> None:
    from secureml.key_management.backends import VaultBackend

    # Wrapped, or (the hot read) scrubbing inline: test_traceback_locals checks both do.
    assert getattr(VaultBackend.get, "__secureml_scrubs__", False)
    assert hasattr(VaultBackend.put, "__wrapped__")
