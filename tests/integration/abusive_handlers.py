"""Handlers that do what an adversary (or a careless user) does to the process or loop that
runs them: fork, raise what cannot cross a pipe, raise ``GeneratorExit``, cancel every
task on the loop, stop the loop, break it. Run by test_handler_abuse.py, in real worker
processes (``--handler tests.integration.abusive_handlers:NAME``) or in a test's thread.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import sys
import time
from pathlib import Path
from typing import Any


def _note_run(params: dict[str, Any]) -> None:
    """One line per run in the file ``runs`` names: how often the task really ran."""
    if "runs" in params:
        with open(params["runs"], "a") as runs:
            runs.write(f"{params.get('n', '')}\n")


def forking(params: dict[str, Any]) -> dict[str, Any]:
    """Forks, and both copies return (the child first): only the handler's own process
    may answer for its task, and only for it."""
    child = os.fork() == 0
    if not child:
        time.sleep(0.05)
    return {"n": params["n"], "by_child": child}


def raises_unimportable(params: dict[str, Any]) -> dict[str, Any]:
    """Raises an exception whose class lives in a plugin folder only this process put on
    its path: the worker cannot unpickle it."""
    _note_run(params)
    if params.get("kind") != "plugin":
        return {"n": params["n"]}
    sys.path.insert(0, params["plugin_dir"])
    plugin = importlib.import_module(params["plugin_module"])
    raise plugin.PluginError(f"plugin failed on {params['n']}")


async def raises_generator_exit(params: dict[str, Any]) -> dict[str, Any]:
    _note_run(params)
    await asyncio.sleep(0)
    if params.get("kind") == "genexit":
        raise GeneratorExit("the handler's own GeneratorExit")
    return {"n": params["n"]}


def _interrupt() -> None:
    raise KeyboardInterrupt("raised by a handler's callback")


async def loop_abuser(params: dict[str, Any]) -> dict[str, Any]:
    """``kind``: ``cancel_all`` (the cleanup idiom: cancel every task on the loop),
    ``stop`` (``loop.stop()``), ``interrupt`` (a callback raising KeyboardInterrupt out
    of the loop), ``break`` (closes the loop's selector: the loop cannot run again); any
    other kind is an innocent task that awaits a while and returns."""
    _note_run(params)
    kind = params.get("kind")
    loop = asyncio.get_running_loop()
    if kind == "cancel_all":
        await asyncio.sleep(0.1)  # the innocent ones are under way
        for task in asyncio.all_tasks():
            task.cancel()
    elif kind == "stop":
        await asyncio.sleep(0.1)
        loop.stop()
    elif kind == "interrupt":
        await asyncio.sleep(0.1)
        loop.call_soon(_interrupt)
    elif kind == "break":
        await asyncio.sleep(0.1)
        loop._selector.close()  # type: ignore[attr-defined]  # what a broken loop looks like
    else:
        await asyncio.sleep(float(params.get("sleep", 0.3)))
    return {"n": params["n"], "kind": kind}


def write_plugin(folder: Path) -> str:
    """A module with an exception class, in ``folder`` (not on the worker's path)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "scraper_plugin.py").write_text(
        "class PluginError(Exception):\n    pass\n", encoding="utf-8"
    )
    return "scraper_plugin"
