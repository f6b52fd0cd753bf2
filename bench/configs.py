"""The servers' configurations and command lines: sample services, gateway, nginx."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from bench.variants import (
    BENCH_CONDITIONAL,
    BENCH_ROUTE_LIMIT,
    CACHE_TTL_PATH,
    CACHE_TTL_S,
    FANOUT_BUDGET_MS,
    HOST,
    MIN_TOKEN_TTL_S,
    ORDERS_PATH,
    PYTHON,
    SLOW_DELAY,
)


def services_command(ports: dict[str, int], latency: str | None, p99: str | None) -> list[str]:
    command = [PYTHON, "-m", "examples.services", "--only", ",".join(ports)]
    for kind, port in ports.items():
        command += ["--port", f"{kind}={port}"]
        if latency is not None:
            command += ["--latency", f"{kind}={latency}"]
        if p99 is not None:
            command += ["--p99", f"{kind}={p99}"]
    return command


def write_gateway_config(
    folder: Path, port: int, routes: list[dict[str, Any]], access_log: str = "off", **extra: Any
) -> Path:
    config = {
        "server": {
            "listen": {"host": HOST, "port": port},
            "access_log": access_log,
            "watch": False,
        },
        **extra,
        "routes": routes,
    }
    path = folder / "gateway.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def proxy_gateway_config(
    folder: Path,
    port: int,
    upstream: str,
    access_log: str,
    auth: str | None = None,
    token_ttl_s: int = MIN_TOKEN_TTL_S,
    rate_limits: dict[str, Any] | None = None,
    cache: dict[str, Any] | None = None,
    ttl_upstream: str | None = None,
    observability: bool | None = None,
) -> Path:
    """d's route (d2 with an access log); with ``auth`` (api_key or jwt), g's or h's.

    The authenticated route is d's with one line more, ``auth: [METHOD]``, and the
    defaults otherwise (identity headers sent upstream, the checked credential hidden
    from it). Its credential store is a SQLite file in ``folder``, absolute paths so that
    the CLI and the gateway open the same one whatever their working directory.

    With ``rate_limits`` (the top-level section: its store), i's or j's: d's route with
    ``rate_limit: BENCH_ROUTE_LIMIT``, a limit decided on every request that never
    refuses, and the defaults otherwise (``on_store_down: fail_open``).

    With ``cache`` (the route's ``cache:``), o's and p's: d's route with ``cache:`` and
    ``conditional: {}``, the process's ``cache:`` section at its defaults. With
    ``ttl_upstream`` too, a second route, CACHE_TTL_PATH cached for CACHE_TTL_S, in
    front of that (counting) users service: the TTL check's.

    With ``observability`` (q's False, r's True), ``metrics:`` and ``tracing:`` both
    switched that way; otherwise both left at their defaults (on).
    """
    route: dict[str, Any] = {"name": "users", "path": "/users/{id}", "methods": ["GET"]}
    extra: dict[str, Any] = {}
    if rate_limits is not None:
        route["rate_limit"] = BENCH_ROUTE_LIMIT
        extra["rate_limits"] = rate_limits
    if auth is not None:
        route["auth"] = [auth]
        spec: dict[str, Any] = {
            "store": "sqlite",
            "sqlite_path": str((folder / "credentials.db").resolve()),
            "pepper_file": str((folder / "pepper.json").resolve()),
        }
        if auth == "jwt":
            # The gateway trusts itself as issuer `self` once it issues tokens; ES256 is
            # the default algorithm, named anyway since it is what h measures.
            spec["oauth"] = {
                "enabled": True,
                "issuer": f"http://{HOST}:{port}",
                "token_ttl": f"{token_ttl_s}s",
                "algorithm": "ES256",
            }
        extra["auth"] = spec
    if cache is not None:
        route["cache"] = cache
        route["conditional"] = BENCH_CONDITIONAL
        extra["cache"] = {}
    if observability is not None:
        extra["metrics"] = {"enabled": observability}
        extra["tracing"] = {"enabled": observability}
    route["proxy"] = {"upstream": "users", "timeout": "5s"}
    routes = [route]
    upstreams: dict[str, Any] = {"users": {"targets": [upstream]}}
    if ttl_upstream is not None:
        routes.append(
            {
                "name": "users-ttl",
                "path": CACHE_TTL_PATH,
                "methods": ["GET"],
                "cache": {"ttl": f"{CACHE_TTL_S}s"},
                "proxy": {"upstream": "counting", "path": "/users/{id}", "timeout": "5s"},
            }
        )
        upstreams["counting"] = {"targets": [ttl_upstream]}
    return write_gateway_config(
        folder, port, routes=routes, access_log=access_log, **extra, upstreams=upstreams
    )


def orders_gateway_config(
    folder: Path,
    port: int,
    upstream: str,
    idempotency: dict[str, Any] | None = None,
    validation: dict[str, Any] | None = None,
) -> Path:
    """k to n: ``POST /orders`` proxied to the orders service, access log off.

    l adds ``idempotency:`` (the top-level store left at its default, memory), n adds
    ``validation:``; k's and m's routes are the same route without them.
    """
    route: dict[str, Any] = {"name": "orders", "path": ORDERS_PATH, "methods": ["POST"]}
    if idempotency is not None:
        route["idempotency"] = idempotency
    if validation is not None:
        route["validation"] = validation
    route["proxy"] = {"upstream": "orders", "timeout": "5s"}
    return write_gateway_config(
        folder, port, routes=[route], upstreams={"orders": {"targets": [upstream]}}
    )


def fanout_backends(origins: dict[str, str], slow: bool) -> dict[str, Any]:
    slow_suffix = f"&delay={SLOW_DELAY}" if slow else ""
    return {
        "users": {"url": f"{origins['users']}/users/{{id}}", "required": True},
        "orders": {"url": f"{origins['orders']}/orders?user={{id}}", "fallback": {"items": []}},
        "recommendations": {
            "url": f"{origins['recommendations']}/recommendations?user={{id}}{slow_suffix}",
            "fallback": {"items": []},
        },
        "inventory": {"url": f"{origins['inventory']}/inventory?skus=SKU-{{id}}"},
        "notifications": {
            "url": f"{origins['notifications']}/notifications?user={{id}}",
            "fallback": {"unread": 0, "items": []},
        },
    }


def fanout_gateway_config(folder: Path, port: int, origins: dict[str, str]) -> Path:
    budget = f"{FANOUT_BUDGET_MS}ms"
    return write_gateway_config(
        folder,
        port,
        routes=[
            {
                "name": "fanout",
                "path": "/fanout/{id}",
                "fanout": {"budget": budget, "backends": fanout_backends(origins, slow=False)},
            },
            {
                "name": "fanout-slow",
                "path": "/fanout-slow/{id}",
                "fanout": {"budget": budget, "backends": fanout_backends(origins, slow=True)},
            },
        ],
    )


def nginx_version() -> tuple[int, ...] | None:
    done = subprocess.run(["nginx", "-v"], capture_output=True, text=True, check=False)
    match = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", done.stderr + done.stdout)
    return tuple(int(n) for n in match.groups()) if match else None


def nginx_command(folder: Path, port: int, upstream_port: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    conf = folder / "nginx.conf"
    temp = {
        name: folder / name
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")  # all under tmp
    }
    conf.write_text(
        f"""\
worker_processes 1;
daemon off;
pid {folder}/nginx.pid;
error_log {folder}/error.log warn;
events {{
    worker_connections 1024;
}}
http {{
    access_log off;
    client_body_temp_path {temp["client_body"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};
    upstream users {{
        server {HOST}:{upstream_port};
        keepalive 64;
    }}
    server {{
        listen {HOST}:{port};
        location / {{
            proxy_pass http://users;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""
    )
    command = ["nginx", "-p", str(folder), "-c", str(conf)]
    version = nginx_version()
    if version is not None and version >= (1, 19, 5):
        # Otherwise nginx opens its compiled-in error log before reading the config.
        command += ["-e", str(folder / "error.log")]
    return command
