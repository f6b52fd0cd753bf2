"""``python -m gateway check``: exit status, the route table, and errors on stderr.

Runs the real command in a subprocess from a foreign working directory, with absolute
paths, so nothing depends on where pytest was started.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import yaml

SHIPPED = Path(__file__).resolve().parents[2] / "config" / "gateway.yaml"


def check(config: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "check", "-c", str(config)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def shipped_routes() -> list[dict[str, Any]]:
    """The shipped routes read with plain PyYAML, independently of the gateway's loader."""
    main = yaml.safe_load(SHIPPED.read_text())
    routes = list(main.get("routes") or [])
    for name in main.get("include") or []:
        included = yaml.safe_load((SHIPPED.parent / name).read_text()) or {}
        routes.extend(included.get("routes") or [])
    return routes


def test_check_of_shipped_config_exits_0_and_lists_every_route(tmp_path: Path) -> None:
    routes = shipped_routes()
    assert routes, "the shipped config is expected to have routes"
    result = check(SHIPPED, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"{SHIPPED}: OK, {len(routes)} routes (* = required part)"
    rows = lines[1:]
    assert len(rows) == len(routes)
    for row, route in zip(rows, routes, strict=True):
        columns = row.split()
        methods = ",".join(m.upper() for m in route.get("methods", ["GET"]))
        assert columns[:2] == [methods, route["path"]], row
        if "name" in route:
            assert columns[2] == route["name"], row
        kind = "proxy" if "proxy" in route else "fanout"
        assert f"{kind} -> " in row
        if kind == "fanout":
            for backend, spec in route["fanout"]["backends"].items():
                shown = backend + ("*" if spec.get("required") else "")
                assert shown in row, row


def test_check_of_broken_config_exits_1_naming_file_line_and_key_path(tmp_path: Path) -> None:
    # One run covers both files: an error in gateway.yaml and one in the file it includes.
    config = tmp_path / "gateway.yaml"
    config.write_text(
        textwrap.dedent(
            """\
            routes:
              - path: /d/{id}
                fanout:
                  budgte: 50ms
                  backends:
                    user: {url: "http://127.0.0.1:9101/users/{id}"}
            include: [routes.yaml]
            """
        )
    )
    routes = tmp_path / "routes.yaml"
    routes.write_text(
        textwrap.dedent(
            """\
            routes:
              - path: /b
                proxy: {url: "http://127.0.0.1:1"}
              - path: /c
                proxy:
                  url: http://127.0.0.1:1
                  timeout: 5
            """
        )
    )
    result = check(config, cwd=tmp_path.parent)
    assert result.returncode == 1
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert lines[0] == f"{config}: the configuration has errors:"
    assert (
        f"  {config}:4: routes[0].fanout.budgte: unknown key 'budgte' (did you mean 'budget'?)"
        in lines
    )
    assert any(
        line.startswith(f"  {routes}:7: routes[1].proxy.timeout: not a duration: 5")
        for line in lines
    ), lines
