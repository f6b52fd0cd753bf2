"""Consumers, from both places they are known: the config (contracts under
``rate_limits.consumers``) and the credential store (consumer records and the owners of
keys and clients).

The plan a consumer's requests are limited on is its contract's ``plan`` when the
contract names one, else its plan in the store, else ``auth.default_plan`` — the same
order the rate-limit policy follows.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from ..stores.base import ApiKeyRecord, ClientRecord
from .http import json_response
from .view import GATEWAY


def _entry(entries: dict[str, dict[str, Any]], consumer_id: str) -> dict[str, Any]:
    entry = entries.get(consumer_id)
    if entry is None:
        entry = entries[consumer_id] = {
            "id": consumer_id,
            "sources": [],
            "plan": None,
            "contract": None,
            "created_at": None,
            "keys": {"live": 0, "total": 0},
            "clients": {"live": 0, "total": 0},
        }
    return entry


def _source(entry: dict[str, Any], source: str) -> None:
    if source not in entry["sources"]:
        entry["sources"].append(source)


def _live(record: ApiKeyRecord | ClientRecord, now: float) -> bool:
    if record.revoked_at is not None:
        return False
    expires_at = getattr(record, "expires_at", None)
    return expires_at is None or expires_at > now


async def list_consumers(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    config = gateway.runtime.config
    entries: dict[str, dict[str, Any]] = {}
    for consumer_id, contract in config.rate_limits.consumers.items():
        entry = _entry(entries, consumer_id)
        _source(entry, "config")
        entry["contract"] = contract.model_dump(mode="json", exclude_none=True)
    auth = gateway.auth
    if auth is not None:
        store = auth.store
        records, keys, clients = await asyncio.gather(
            store.list_consumers(), store.list_api_keys(), store.list_clients()
        )
        now = gateway.clock.wall()
        for record in records:
            entry = _entry(entries, record.id)
            _source(entry, "store")
            entry["plan"], entry["created_at"] = record.plan, record.created_at
        for owned, kind in ((keys, "keys"), (clients, "clients")):
            for credential in owned:
                entry = _entry(entries, credential.consumer_id)
                _source(entry, "store")
                entry[kind]["total"] += 1
                entry[kind]["live"] += _live(credential, now)
    default_plan = config.auth.default_plan
    for entry in entries.values():
        contract_plan = (entry["contract"] or {}).get("plan")
        entry["effective_plan"] = contract_plan or entry["plan"] or default_plan
    return json_response(
        {
            "default_plan": default_plan,
            "plans": {
                name: plan.model_dump(mode="json", exclude_none=True)
                for name, plan in config.rate_limits.plans.items()
            },
            "credential_store": auth is not None,
            "consumers": [entries[consumer_id] for consumer_id in sorted(entries)],
        }
    )
