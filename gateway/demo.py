"""``gateway demo``: the five sample services and the gateway, with commands to paste.

Each start makes a fresh demo API key and OAuth client (for the consumer ``demo``) and
revokes the previous ones: secrets are stored only as hashes, so the demo cannot show
an old one again.
"""

from __future__ import annotations

import sys
from pathlib import Path
from urllib.parse import quote

from examples.services import DEFAULT_PORTS, Behaviour, start_services

from .admin.app import admin_token
from .config.loader import LoadedConfig
from .policies.auth import manage
from .serve import serve
from .server import Gateway

DEMO_CONSUMER = "demo"
_PRINT_ACCESS_TOKEN = """'import sys, json; print(json.load(sys.stdin)["access_token"])'"""  # noqa: S105 - a shell snippet


async def demo_credentials(gateway: Gateway) -> tuple[str, str, str] | None:
    """A new API key and OAuth client for the demo consumer; old demo ones revoked."""
    auth = gateway.auth
    if auth is None:
        return None
    clock = gateway.clock
    for record in await auth.store.list_api_keys(DEMO_CONSUMER):
        await auth.store.revoke_api_key(record.key_id, clock.wall())
    for client in await auth.store.list_clients():
        if client.consumer_id == DEMO_CONSUMER:
            await auth.store.revoke_client(client.client_id, clock.wall())
    scopes = ("orders:read", "orders:write", "account:read", "account:write")
    key = await manage.create_api_key(
        auth.store, auth.peppers, clock, consumer_id=DEMO_CONSUMER, plan="pro", scopes=scopes
    )
    created = await manage.create_client(
        auth.store, auth.peppers, clock, consumer_id=DEMO_CONSUMER, plan="pro", scopes=scopes
    )
    return key.key, created.record.client_id, created.secret


def admin_lines(gateway: Gateway, base_dir: Path) -> list[str]:
    """The banner's admin part: the dashboard's link with the token, the token, curls.

    The token goes in the link's fragment (``#token=``): the browser never sends a
    fragment, so the token reaches no log, and the page takes it out of the address bar.
    """
    config = gateway.runtime.config
    if gateway.admin_port is None:
        return []
    admin = config.admin
    base = f"http://{admin.listen.host}:{gateway.admin_port}"
    # The same token the listener checks: the environment variable, else the file.
    token = admin_token(admin, base_dir)
    return [
        "",
        "Dashboard (live figures per route; the link carries the admin token):",
        # Encoded: a token from the environment may hold '+' or '&'.
        f"  {base}/#token={quote(token, safe='')}",
        "",
        f"Admin API, token {token}",
        f"  (from ${admin.token_env}, else {admin.token_file} relative to the config folder)",
        f"  curl -H 'Authorization: Bearer {token}' {base}/metrics",
        f"  curl -H 'Authorization: Bearer {token}' {base}/admin/routes",
    ]


async def _banner(gateway: Gateway, base_dir: Path) -> None:
    config = gateway.runtime.config
    base = f"http://{config.server.listen.host}:{gateway.port}"
    services = "  ".join(f"{kind} :{port}" for kind, port in DEFAULT_PORTS.items())
    control = f"localhost:{DEFAULT_PORTS['orders']}/_control"
    lines = [
        "",
        f"Sample services: {services}",
        f"Gateway:         {base}   (routes from {gateway.runtime.files[-1]})",
        "",
        "Try:",
        "  # a proxied route, cached at the edge for 10 s (run it twice: Cache-Status, Age)",
        f"  curl -i {base}/v1/users/42",
        "  # a fan-out route: five services at once under a 50 ms budget (see Server-Timing)",
        f"  curl -i {base}/v1/dashboard/42",
        "  # the same fan-out with one slow service: answered at the budget, Gateway-Partial set",
        f"  curl -i {base}/v1/dashboard-slow/42",
        "  # make a service slow for every request, then put it back",
        f'  curl -X PUT {control} -d \'{{"latency": "200ms"}}\'',
        f'  curl -X PUT {control} -d \'{{"latency": "3ms"}}\'',
    ]
    credentials = await demo_credentials(gateway)
    if credentials is not None:
        key, client_id, secret = credentials
        token_url = f"{base}{config.auth.oauth.token_path}"
        lines += [
            "",
            "Authenticated routes (fresh demo credentials, consumer 'demo', plan 'pro'):",
            "  # an API-key route",
            f"  curl -i -H 'X-API-Key: {key}' {base}/v1/orders/ord_1",
            "  # OAuth2 client credentials: get a token, then call a JWT route",
            f"  TOKEN=$(curl -s -u '{client_id}:{secret}' -d grant_type=client_credentials \\",
            f"    {token_url} | python3 -c {_PRINT_ACCESS_TOKEN})",
            f'  curl -i -H "Authorization: Bearer $TOKEN" {base}/v1/account/42',
            "  # a write that invalidates the cached user (the next GET is a miss again)",
            f"  curl -i -X PUT -H 'X-API-Key: {key}' -H 'Content-Type: application/json' "
            f'-d \'{{"tier": "gold"}}\' {base}/v1/users/42',
            "  # an idempotent POST with a schema: send it twice, the order is created once",
            f"  curl -i -H 'X-API-Key: {key}' -H 'Idempotency-Key: \"order-1\"' \\",
            f'    -H \'Content-Type: application/json\' -d \'{{"sku": "HOME-1", "quantity": 2}}\' '
            f"{base}/v1/orders",
            "  # the gateway's public signing keys",
            f"  curl {base}{config.auth.oauth.jwks_path}",
        ]
    lines += [
        "",
        "Versions (header strategy; v1 is deprecated, see Deprecation/Sunset/Link):",
        f"  curl -i -H 'API-Version: 1' {base}/catalog/SKU-1",
        f"  curl -i {base}/catalog/SKU-1",
    ]
    lines += admin_lines(gateway, base_dir)
    lines += [
        "",
        "Edit config/routes.yaml and save: the gateway reloads it. Ctrl-C stops everything.",
        "",
    ]
    print("\n".join(lines), flush=True)


async def run_demo(loaded: LoadedConfig) -> int:
    behaviours = {kind: Behaviour(median_s=0.003, p99_s=0.008) for kind in DEFAULT_PORTS}
    try:
        group = await start_services("127.0.0.1", dict(DEFAULT_PORTS), behaviours, seed=7)
    except OSError as exc:
        print(f"cannot start the sample services: {exc}", file=sys.stderr)
        return 1

    async def banner(gateway: Gateway) -> None:
        await _banner(gateway, loaded.base_dir)

    try:
        return await serve(loaded, on_ready=banner)
    finally:
        await group.close()
