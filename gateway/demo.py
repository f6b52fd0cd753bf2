"""``gateway demo``: the five sample services and the gateway, with curl commands to try."""

from __future__ import annotations

import sys

from examples.services import DEFAULT_PORTS, start_services

from .config.loader import LoadedConfig
from .serve import serve
from .server import Gateway


def _banner(gateway: Gateway) -> None:
    host = gateway.runtime.config.server.listen.host
    base = f"http://{host}:{gateway.port}"
    services = "  ".join(f"{kind} :{port}" for kind, port in DEFAULT_PORTS.items())
    print(
        f"""
Sample services: {services}
Gateway:         {base}   (routes from {gateway.runtime.files[-1]})

Try:
  # a proxied route
  curl -i {base}/v1/users/42
  # a fan-out route: five services at once under a 50 ms budget (see Server-Timing)
  curl -i {base}/v1/dashboard/42
  # the same fan-out with one slow service: answered at the budget, Gateway-Partial set
  curl -i {base}/v1/dashboard-slow/42
  # make a service slow for every request, then put it back
  curl -X PUT localhost:{DEFAULT_PORTS["orders"]}/_control -d '{{"latency": "200ms"}}'
  curl -X PUT localhost:{DEFAULT_PORTS["orders"]}/_control -d '{{"latency": "3ms"}}'

Edit config/routes.yaml and save: the gateway reloads it. Ctrl-C stops everything.
""",
        flush=True,
    )


async def run_demo(loaded: LoadedConfig) -> int:
    from examples.services import Behaviour

    behaviours = {kind: Behaviour(median_s=0.003, p99_s=0.008) for kind in DEFAULT_PORTS}
    try:
        group = await start_services("127.0.0.1", dict(DEFAULT_PORTS), behaviours, seed=7)
    except OSError as exc:
        print(f"cannot start the sample services: {exc}", file=sys.stderr)
        return 1
    try:
        return await serve(loaded, on_ready=_banner)
    finally:
        await group.close()
