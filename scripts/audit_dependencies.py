"""Known vulnerabilities in the installed dependency set, from PyPI's JSON API.

    python scripts/audit_dependencies.py [--extras postgres,metrics]

Use ``pip-audit`` where it can run. On machines whose network reaches pypi.org's
project pages but neither its per-release pages nor osv.dev (this project's CI
machine), pip-audit cannot audit anything; this script is the fallback. A
project page lists the vulnerabilities of the latest release only, so a
dependency is audited when the installed version IS the latest; any other is
reported as not audited, never as clean. Exit status 1 on a finding.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import urllib.request
from importlib import metadata

ROOT_DISTRIBUTION = "taskmanager-bridge"


def _name(requirement: str) -> str:
    return re.split(r"[ ;<>=!~\[]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def closure(extras: set[str]) -> dict[str, str]:
    """Installed name -> version of our dependencies, transitively."""
    found: dict[str, str] = {}
    todo = [(ROOT_DISTRIBUTION, extras)]
    while todo:
        name, wanted = todo.pop()
        for requirement in metadata.requires(name) or []:
            marker = requirement.split(";", 1)[1] if ";" in requirement else ""
            extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", marker)
            if extra and extra.group(1) not in wanted:
                continue
            dependency = _name(requirement)
            if dependency in found:
                continue
            try:
                found[dependency] = metadata.version(dependency)
            except metadata.PackageNotFoundError:
                continue  # a marker excluded it on this Python
            brackets = re.search(r"\[([^\]]*)\]", requirement.split(";", 1)[0])
            todo.append((dependency, set(brackets.group(1).split(",")) if brackets else set()))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extras", default="postgres,metrics")
    args = parser.parse_args()
    findings, unaudited = 0, 0
    dependencies = closure(set(filter(None, args.extras.split(","))))
    for name, installed in sorted(dependencies.items()):
        url = f"https://pypi.org/pypi/{name}/json"
        try:
            with urllib.request.urlopen(url, timeout=20) as answer:
                project = json.load(answer)
        except OSError as exc:
            print(f"{name} {installed}: NOT AUDITED ({exc})")
            unaudited += 1
            continue
        latest = project["info"]["version"]
        if latest != installed:
            print(f"{name} {installed}: NOT AUDITED (PyPI's page covers {latest} only)")
            unaudited += 1
            continue
        vulnerabilities = project.get("vulnerabilities") or []
        for vulnerability in vulnerabilities:
            print(f"{name} {installed}: {vulnerability.get('id')} {vulnerability.get('summary')}")
        findings += len(vulnerabilities)
        if not vulnerabilities:
            print(f"{name} {installed}: no known vulnerability")
    print(f"findings: {findings}; not audited: {unaudited}")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
