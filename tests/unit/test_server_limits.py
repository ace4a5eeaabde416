"""The server's limits, known to the client: type names.

A type name is matched in the URL path without percent-decoding.
"""

from __future__ import annotations

import pytest
import responses

from taskmanager import TaskManagerClient, TaskManagerValidationError
from taskmanager.validation import check_type_name, type_name_segment

from .conftest import BASE, ok

pytestmark = pytest.mark.unit


PCHAR_NAME = "Adv:colon+plus@at(p)'q,c;s=e*s!d$a&m~t-._9"


def test_type_names_go_raw_where_a_path_allows_and_encoded_only_where_it_must():
    assert type_name_segment(PCHAR_NAME) == PCHAR_NAME
    assert type_name_segment("a b/c?d#e%f\u00e9") == "a%20b%2Fc%3Fd%23e%25f%C3%A9"


@pytest.mark.parametrize(
    "name", ["a b", "a/b", "a?b", "a#b", "100%", "caf\u00e9", "tab\t", ".", "..", ""]
)
def test_register_refuses_a_name_the_server_can_never_look_up(
    name: str, mocked: responses.RequestsMock, client: TaskManagerClient
):
    with pytest.raises(TaskManagerValidationError, match="task type name"):
        check_type_name(name)
    with pytest.raises(TaskManagerValidationError, match="task type name"):
        client.register_task_type(name, "1", {"type": "object"})
    assert len(mocked.calls) == 0


def test_register_accepts_every_name_made_of_path_characters(
    mocked: responses.RequestsMock, client: TaskManagerClient
):
    mocked.post(
        f"{BASE}/task-types/register",
        json=ok({"id": "4", "name": PCHAR_NAME, "version": "1", "created": True}),
    )
    assert client.register_task_type(PCHAR_NAME, "1", {"type": "object"}).id == 4
