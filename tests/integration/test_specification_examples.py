"""The original specification's example code, run as written against the emulator.

Only what cannot run here is replaced: the scraper and the ideas database
(stand-ins below), and ``while True`` (bounded, so the test ends).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from taskmanager.emulator import EmulatorServer


class IdeaInspirationDatabase:
    def __init__(self, path: str) -> None:
        self.rows: list[dict[str, str]] = []

    def insert(self, idea: dict[str, str]) -> None:
        self.rows.append(idea)


def scrape_youtube_channel(params: dict[str, object]) -> list[dict[str, str]]:
    if params["channel_url"] == "https://youtube.com/@broken":
        raise RuntimeError("channel page changed")
    return [{"title": f"idea {i}"} for i in range(int(params.get("top_n", 2)))]  # type: ignore[call-overload]


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[EmulatorServer]:
    with EmulatorServer(api_key="your-api-key") as server:
        # The examples build TaskManagerConfig(api_key=...) only; the URL comes from the env.
        monkeypatch.setenv("TASKMANAGER_API_URL", server.url)
        yield server


def test_pattern_1_direct_integration(emulator: EmulatorServer):
    from taskmanager import TaskManagerClient, TaskManagerConfig

    # Setup
    config = TaskManagerConfig(api_key="your-api-key")
    tm_client = TaskManagerClient(config)
    db = IdeaInspirationDatabase("db.s3db")

    # Register task type (one-time setup)
    tm_client.register_task_type(
        name="youtube_channel_scrape",
        version="1.0",
        param_schema={
            "type": "object",
            "properties": {"channel_url": {"type": "string"}, "top_n": {"type": "integer"}},
            "required": ["channel_url"],
        },
    )
    good = tm_client.create_task(
        "youtube_channel_scrape", {"channel_url": "https://youtube.com/@a", "top_n": 3}
    )
    bad = tm_client.create_task(
        "youtube_channel_scrape", {"channel_url": "https://youtube.com/@broken"}
    )

    # Worker loop
    for _ in range(3):
        # Claim task from external API
        task = tm_client.claim_task(
            task_type="youtube_channel_scrape", worker_id="youtube-worker-001"
        )

        if task:
            try:
                # Process task
                results = scrape_youtube_channel(task["params"])

                # Save to IdeaInspiration database (local storage)
                for idea in results:
                    db.insert(idea)

                # Report completion to external API
                tm_client.complete_task(
                    task_id=task["id"], result={"ideas_found": len(results)}, status="completed"
                )
            except Exception as e:
                # Report failure
                tm_client.complete_task(
                    task_id=task["id"], result={"error": str(e)}, status="failed"
                )

    assert len(db.rows) == 3
    done = tm_client.get_task_status(good)
    assert (done["status"], done["result"]) == ("completed", {"ideas_found": 3})
    failed = tm_client.get_task_status(bad)
    assert failed.status == "pending" and failed.error_message == "channel page changed"
    assert failed.attempts == 2  # the third turn of the loop claimed the retry and failed again
    assert tm_client.health_check() is True
