"""g's API key and h's OAuth client and token, made with the gateway's own CLI and
token endpoint, and their forgeries."""

from __future__ import annotations

import base64
import json
import math
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from bench.errors import BenchError
from bench.rounds import is_number
from bench.variants import (
    BENCH_CONSUMER,
    BENCH_SCOPE,
    CLI_TIMEOUT_S,
    MIN_TOKEN_TTL_S,
    PYTHON,
    ROOT,
    WARMUP_S,
)


def credential_cli(config: Path, *args: str) -> str:
    """stdout of ``python -m gateway ARGS -c CONFIG`` (keys create, clients create)."""
    command = [PYTHON, "-m", "gateway", *args, "-c", str(config)]
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=CLI_TIMEOUT_S,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"`gateway {' '.join(args)}` took over {CLI_TIMEOUT_S:g}s") from exc
    if done.returncode != 0:
        raise BenchError(
            f"`gateway {' '.join(args)}` failed ({done.returncode}): {done.stderr.strip()}"
        )
    return done.stdout


def create_api_key(config: Path) -> str:
    """A new API key of consumer ``bench`` in the config's store (the CLI prints it)."""
    out = credential_cli(config, "keys", "create", "--consumer", BENCH_CONSUMER)
    words = out.split()
    if len(words) != 1 or not words[0].startswith("gwk_"):
        raise BenchError(f"`gateway keys create` printed no key: {out!r}")
    return words[0]


def create_client(config: Path) -> tuple[str, str]:
    """A new OAuth client ``(client_id, client_secret)`` of consumer ``bench``."""
    out = credential_cli(
        config, "clients", "create", "--consumer", BENCH_CONSUMER, "--scopes", BENCH_SCOPE
    )
    values = dict(line.partition("=")[::2] for line in out.splitlines() if "=" in line)
    client_id, secret = values.get("client_id"), values.get("client_secret")
    if not client_id or not secret:
        raise BenchError(f"`gateway clients create` printed no client: {out!r}")
    return client_id, secret


def fetch_token(token_url: str, client: tuple[str, str], lasting: float) -> str:
    """An access token from the gateway's token endpoint (client credentials, Basic).

    It must last at least ``lasting`` seconds: a token expiring mid-run would turn the
    rest of h's runs into fast 401s.
    """
    # RFC 6749 section 2.3.1: each part is form-urlencoded before the Basic encoding.
    basic = ":".join(urllib.parse.quote(part, safe="") for part in client)
    request = urllib.request.Request(
        token_url,
        data=urllib.parse.urlencode({"grant_type": "client_credentials"}).encode(),
        headers={
            "Authorization": "Basic " + base64.b64encode(basic.encode()).decode(),
            "Content-Type": "application/x-www-form-urlencoded",
        },
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise BenchError(f"POST {token_url} answered {exc.code}: {exc.read()[:300]!r}") from exc
    except (OSError, ValueError) as exc:
        raise BenchError(f"POST {token_url} failed: {exc}") from exc
    token = body.get("access_token") if isinstance(body, dict) else None
    if not isinstance(token, str) or token.count(".") != 2:
        raise BenchError(f"POST {token_url} returned no JWT: {body!r}")
    expires_in = body.get("expires_in")
    if not is_number(expires_in) or expires_in < lasting:
        raise BenchError(f"the token lasts {expires_in}s, the run needs {lasting:.0f}s")
    return token


def plan_token_ttl_s(variants: int, rounds: int, round_s: int) -> int:
    """h's token lifetime: an hour, or twice the closed-loop runs' planned time if longer."""
    planned = variants * (WARMUP_S + rounds * (round_s + 5)) + 120
    return max(MIN_TOKEN_TTL_S, math.ceil(2 * planned))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _flip(text: str, index: int) -> str:
    """``text`` with the character at ``index`` changed (to another base64url letter)."""
    new = "A" if text[index] != "A" else "B"
    return text[:index] + new + text[index + 1 :]


def tampered_credentials(key: str, headers: dict[str, str]) -> dict[str, dict[str, str]]:
    """Forgeries of g's key or h's token, each of which must be refused with a 401.

    A route that accepted any key, or a token cache keyed by less than the whole token
    (say, by its signature alone), would answer them 200 and be measured doing less
    work. Probed after the genuine credential, so that its verification is cached.
    """
    ((name, value),) = headers.items()
    if key == "g":
        # gwk_<key id>_<secret>: change the secret's middle, keep the key id (which has
        # no '_'; the secret may).
        secret_at = value.index("_", len("gwk_")) + 1
        middle = secret_at + (len(value) - secret_at) // 2
        return {"a key with a wrong secret": {name: _flip(value, middle)}}
    scheme, _, token = value.partition(" ")
    head, payload, signature = token.split(".")
    claims = json.loads(_b64url_decode(payload))
    claims["sub"] = f"{claims.get('sub')}-forged"
    forged = _b64url(json.dumps(claims, separators=(",", ":")).encode())
    flipped = _flip(signature, len(signature) // 2)
    return {
        "a token with a changed payload and the original signature": {
            name: f"{scheme} {head}.{forged}.{signature}"
        },
        "a token with a changed signature": {name: f"{scheme} {head}.{payload}.{flipped}"},
    }
