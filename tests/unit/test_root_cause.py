"""A failed request's reason names its root cause in full: refused, DNS, TLS, reset, timeout."""

from __future__ import annotations

import socket
import ssl

import pytest
import requests
from urllib3.exceptions import MaxRetryError, NameResolutionError, NewConnectionError

from taskmanager import TaskManagerClient, TaskManagerConfig, TaskManagerConnectionError
from taskmanager.transport import root_cause


def _wrapped(cause: BaseException) -> requests.ConnectionError:
    """The chain requests raises: ConnectionError(MaxRetryError(reason=...)) from the cause."""
    try:
        try:
            raise cause
        except BaseException as exc:
            raise NewConnectionError(None, f"Failed to establish a new connection: {exc}") from exc  # type: ignore[arg-type]
    except NewConnectionError as new:
        retry = MaxRetryError(None, "/api/tasks/claim", reason=new)  # type: ignore[arg-type]
        return requests.ConnectionError(retry)


@pytest.mark.parametrize(
    ("cause", "words"),
    [
        (ConnectionRefusedError(111, "Connection refused"), "connection refused"),
        (socket.gaierror(-2, "Name or service not known"), "did not resolve (DNS)"),
        (ssl.SSLCertVerificationError("certificate verify failed"), "TLS failed"),
        (ConnectionResetError(104, "Connection reset by peer"), "reset by the other end"),
        (TimeoutError("timed out"), "timed out"),
    ],
)
def test_each_root_cause_is_named_with_its_own_text(cause: BaseException, words: str):
    reason = root_cause(_wrapped(cause))
    assert words in reason and str(cause) in reason


def test_an_unknown_cause_is_the_deepest_error_in_full():
    long_text = "x" * 400
    assert root_cause(_wrapped(OSError(long_text))).endswith(long_text)
    gaierror = socket.gaierror(-2, "Name or service not known")
    resolution = NameResolutionError("api.example.test", None, gaierror)  # type: ignore[arg-type]
    resolution.__cause__ = gaierror  # as urllib3 raises it: ``from`` the resolver's error
    assert "DNS" in root_cause(requests.ConnectionError(resolution))


def test_a_refused_port_says_refused_on_the_wire():
    with socket.socket() as probe:  # a loopback port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = TaskManagerConfig(
        api_url=f"http://127.0.0.1:{port}/api", api_key="k", retry_attempts=0, timeout=2
    )
    with TaskManagerClient(config) as client, pytest.raises(TaskManagerConnectionError) as caught:
        client.get_task(1)
    assert "connection refused" in str(caught.value)


def test_a_reason_quoting_the_whole_url_shows_it_without_its_password():
    """An HTTP library's own text may quote the URL ("Failed to parse: <url>")."""
    from taskmanager.no_answer import no_answer

    url = "http://user:S3cretApiPw@127.0.0.1:99999/api/tasks/1"
    failure = requests.exceptions.InvalidURL(f"Failed to parse: {url}")
    error = no_answer("request", failure, "GET", url).error
    assert error is not None and "S3cretApiPw" not in f"{error} {error!r}"
    assert str(error).count("http://user:***@127.0.0.1:99999/api/tasks/1") == 2
