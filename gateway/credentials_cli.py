"""``gateway keys``, ``gateway clients`` and ``gateway signing-keys``.

They work on the credential store the config names, with the same code as the admin
API. A running gateway trusts a cached key lookup for ``auth.cache_ttl`` (10 s by
default), so a revocation made here reaches it within that time; the admin API's
revocation is immediate.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

from .config import ConfigError, load_config
from .config.loader import LoadedConfig
from .config.units import parse_duration
from .context import SystemClock
from .policies.auth import manage
from .policies.auth.secrets import Peppers
from .policies.auth.services import open_store, resolve
from .policies.auth.signing import rotate_signing_key
from .stores.base import CredentialStore, StoreError

Command = Callable[[argparse.Namespace, CredentialStore, Peppers, LoadedConfig], Awaitable[int]]


def add_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], config_default: str
) -> None:
    keys = commands.add_parser("keys", help="API keys: create, list, revoke, rotate")
    key_commands = keys.add_subparsers(dest="action", required=True)
    create = _with_config(
        key_commands.add_parser("create", help="create a key (shown once)"), config_default
    )
    create.add_argument("--consumer", required=True, help="the consumer the key belongs to")
    create.add_argument("--plan", help="set the consumer's plan")
    create.add_argument("--scopes", default="", help="comma-separated scopes")
    create.add_argument("--expires", type=_duration_arg, help="lifetime, e.g. 90d, 12h")
    create.set_defaults(run=_keys_create)
    listing = _with_config(
        key_commands.add_parser("list", help="list keys (never secrets)"), config_default
    )
    listing.add_argument("--consumer", help="only this consumer's keys")
    listing.set_defaults(run=_keys_list)
    revoke = _with_config(key_commands.add_parser("revoke", help="revoke a key"), config_default)
    revoke.add_argument("key_id")
    revoke.set_defaults(run=_keys_revoke)
    rotate = _with_config(
        key_commands.add_parser("rotate", help="new key; the old one overlaps"), config_default
    )
    rotate.add_argument("key_id")
    rotate.add_argument("--overlap", type=_duration_arg, default=86400.0, help="default 1d")
    rotate.set_defaults(run=_keys_rotate)

    clients = commands.add_parser("clients", help="OAuth clients: create, list, revoke")
    client_commands = clients.add_subparsers(dest="action", required=True)
    create = _with_config(
        client_commands.add_parser("create", help="create a client (secret shown once)"),
        config_default,
    )
    create.add_argument("--consumer", required=True)
    create.add_argument("--plan")
    create.add_argument("--scopes", default="", help="comma-separated scopes it may ask for")
    create.set_defaults(run=_clients_create)
    _with_config(
        client_commands.add_parser("list", help="list clients"), config_default
    ).set_defaults(run=_clients_list)
    revoke = _with_config(
        client_commands.add_parser("revoke", help="revoke a client"), config_default
    )
    revoke.add_argument("client_id")
    revoke.set_defaults(run=_clients_revoke)

    pepper = commands.add_parser("pepper", help="the server secret that keys credential hashes")
    pepper_commands = pepper.add_subparsers(dest="action", required=True)
    _with_config(
        pepper_commands.add_parser("rotate", help="new pepper for new credentials"),
        config_default,
    ).set_defaults(run=_pepper_rotate)

    signing = commands.add_parser("signing-keys", help="the gateway's token signing keys")
    signing_commands = signing.add_subparsers(dest="action", required=True)
    _with_config(
        signing_commands.add_parser(
            "rotate", help="new signing key; old public key stays published"
        ),
        config_default,
    ).set_defaults(run=_signing_rotate)
    _with_config(
        signing_commands.add_parser("list", help="list signing keys"), config_default
    ).set_defaults(run=_signing_list)


def _with_config(parser: argparse.ArgumentParser, default: str) -> argparse.ArgumentParser:
    parser.add_argument("-c", "--config", default=default, help="gateway YAML file")
    parser.set_defaults(func=run_credential_command)
    return parser


def _duration_arg(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _scopes(text: str) -> tuple[str, ...]:
    return tuple(scope.strip() for scope in text.split(",") if scope.strip())


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def run_credential_command(args: argparse.Namespace) -> int:
    import asyncio

    try:
        loaded = load_config(args.config)
    except ConfigError as exc:
        print(f"{args.config}: the configuration has errors:\n{exc}", file=sys.stderr)
        return 1

    async def main() -> int:
        store = open_store(loaded.config.auth, loaded.base_dir)
        try:
            await store.open()
            peppers = Peppers.load_or_create(
                resolve(loaded.base_dir, loaded.config.auth.pepper_file)
            )
            command: Command = args.run
            return await command(args, store, peppers, loaded)
        except StoreError as exc:
            print(f"the credential store failed: {exc}", file=sys.stderr)
            return 1
        finally:
            await store.close()

    return asyncio.run(main())


async def _keys_create(
    args: argparse.Namespace, store: CredentialStore, peppers: Peppers, loaded: LoadedConfig
) -> int:
    created = await manage.create_api_key(
        store,
        peppers,
        SystemClock(),
        consumer_id=args.consumer,
        plan=args.plan,
        default_plan=loaded.config.auth.default_plan,
        scopes=_scopes(args.scopes),
        expires_in=args.expires,
    )
    record = created.record
    print(created.key)
    print(
        f"key id {record.key_id} for consumer {record.consumer_id}; "
        f"expires {_when(record.expires_at)}. Store the key now: it is not shown again.",
        file=sys.stderr,
    )
    return 0


async def _keys_list(
    args: argparse.Namespace, store: CredentialStore, peppers: Peppers, loaded: LoadedConfig
) -> int:
    rows = [("KEY ID", "CONSUMER", "SCOPES", "CREATED", "EXPIRES", "LAST USED", "STATE")]
    now = time.time()
    for record in await store.list_api_keys(args.consumer):
        state = (
            "revoked"
            if record.revoked_at
            else (
                "expired"
                if record.expires_at is not None and record.expires_at <= now
                else "active"
            )
        )
        rows.append(
            (
                record.key_id,
                record.consumer_id,
                ",".join(record.scopes) or "-",
                _when(record.created_at),
                _when(record.expires_at),
                _when(record.last_used_at),
                state,
            )
        )
    _print_table(rows)
    return 0


async def _keys_revoke(
    args: argparse.Namespace, store: CredentialStore, peppers: Peppers, loaded: LoadedConfig
) -> int:
    return _revoked(await store.revoke_api_key(args.key_id, time.time()), "key", args.key_id)


async def _keys_rotate(
    args: argparse.Namespace, store: CredentialStore, peppers: Peppers, loaded: LoadedConfig
) -> int:
    created = await manage.rotate_api_key(
        store, peppers, SystemClock(), args.key_id, overlap=args.overlap
    )
    if created is None:
        print(f"no live key {args.key_id}", file=sys.stderr)
        return 1
    print(created.key)
    print(
        f"new key id {created.record.key_id}; {args.key_id} keeps working until "
        f"{_when(time.time() + args.overlap)} at the latest.",
        file=sys.stderr,
    )
    return 0


async def _clients_create(
    args: argparse.Namespace, store: CredentialStore, peppers: Peppers, loaded: LoadedConfig
) -> int:
    created = await manage.create_client(
        store,
        peppers,
        SystemClock(),
        consumer_id=args.consumer,
        plan=args.plan,
        default_plan=loaded.config.auth.default_plan,
        scopes=_scopes(args.scopes),
    )
    print(f"client_id={created.record.client_id}")
    print(f"client_secret={created.secret}")
    print("Store the secret now: it is not shown again.", file=sys.stderr)
    return 0


async def _clients_list(
    args: argparse.Namespace, store: CredentialStore, peppers: Peppers, loaded: LoadedConfig
) -> int:
    rows = [("CLIENT ID", "CONSUMER", "SCOPES", "CREATED", "STATE")]
    for record in await store.list_clients():
        rows.append(
            (
                record.client_id,
                record.consumer_id,
                ",".join(record.scopes) or "-",
                _when(record.created_at),
                "revoked" if record.revoked_at else "active",
            )
        )
    _print_table(rows)
    return 0


async def _clients_revoke(
    args: argparse.Namespace, store: CredentialStore, peppers: Peppers, loaded: LoadedConfig
) -> int:
    revoked = await store.revoke_client(args.client_id, time.time())
    return _revoked(revoked, "client", args.client_id)


def _revoked(done: bool, what: str, identifier: str) -> int:
    print(f"revoked {identifier}" if done else f"no live {what} {identifier}", file=sys.stderr)
    return 0 if done else 1


async def _pepper_rotate(
    args: argparse.Namespace, store: CredentialStore, peppers: Peppers, loaded: LoadedConfig
) -> int:
    version = Peppers.rotate(resolve(loaded.base_dir, loaded.config.auth.pepper_file))
    print(
        f"pepper version {version} is current; existing keys keep verifying with theirs. "
        "Send running gateways SIGHUP (or restart them) before creating new credentials.",
        file=sys.stderr,
    )
    return 0


async def _signing_rotate(
    args: argparse.Namespace, store: CredentialStore, peppers: Peppers, loaded: LoadedConfig
) -> int:
    record = await rotate_signing_key(store, loaded.config.auth.oauth, SystemClock())
    print(
        f"new signing key {record.kid} ({record.algorithm}); older keys stay published until "
        "every token they signed has expired",
        file=sys.stderr,
    )
    return 0


async def _signing_list(
    args: argparse.Namespace, store: CredentialStore, peppers: Peppers, loaded: LoadedConfig
) -> int:
    rows = [("KID", "ALG", "CREATED", "RETIRED", "PUBLISHED UNTIL")]
    for record in await store.list_signing_keys():
        rows.append(
            (
                record.kid,
                record.algorithm,
                _when(record.created_at),
                _when(record.retired_at),
                _when(record.publish_until) if record.retired_at else "(signing)",
            )
        )
    _print_table(rows)
    return 0


def _print_table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
