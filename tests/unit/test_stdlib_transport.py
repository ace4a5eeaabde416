"""The http.client transport's own decisions: where a request goes, what it shows.

Its behaviour on the wire (every server quirk, TLS, closing, idle connections) is in
``tests/integration/test_client_parity.py``, with every other client.
"""

from __future__ import annotations

import pytest
import requests

from taskmanager import TaskManagerConfig, TaskManagerConfigError
from taskmanager.exchange import Send
from taskmanager.stdlib_transport import Origin

pytestmark = pytest.mark.unit


def origin(api_url: str) -> Origin:
    return Origin(TaskManagerConfig(api_url=api_url, api_key="k"))


@pytest.mark.parametrize("host", ["faß.example", "bücher.example", "例え.テスト"])
def test_an_international_host_goes_where_requests_sends_it(host: str):
    """IDNA 2008 as requests and aiohttp write it: Python's own codec (IDNA 2003) maps
    ``faß`` to ``fass``, another host, which would receive the API key."""
    sent_by_requests = requests.Request("GET", f"https://{host}/api").prepare().url
    assert sent_by_requests is not None
    assert f"https://{origin(f'https://{host}/api').host}/api" == sent_by_requests


def test_a_host_name_that_cannot_be_written_is_a_config_error():
    with pytest.raises(TaskManagerConfigError, match="host name is not valid"):
        origin(f"https://{'ä' * 64}.example/api")


def test_the_path_of_api_url_goes_percent_encoded_and_the_rest_as_built():
    """A raw non-ASCII path is encoded as requests encodes it; what the client appended
    (a type name raw where a path allows) is sent exactly as built."""
    where = origin("https://tm.example/äpi")
    send = Send("GET", "https://tm.example/äpi/task-types/a:b+c", None, {"n": 2}, {})
    assert where.target(send) == "/%C3%A4pi/task-types/a:b+c?n=2"


def test_a_request_shows_no_key_in_its_repr():
    send = Send("POST", "https://tm.example/api/tasks", b"{}", None, {"X-API-Key": "s3cret"})
    assert "s3cret" not in repr(send) and "s3cret" not in str(send)
