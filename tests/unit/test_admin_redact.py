"""Credentials never leave the admin API: URLs in config values and in error texts."""

from __future__ import annotations

from gateway.admin.redact import redact, scrub


def test_url_passwords_and_secret_query_values_are_masked() -> None:
    config = {
        "rate_limits": {"redis_url": "redis://:s3cret@10.0.0.1:6379/0", "redis_timeout": 0.005},
        "auth": {"redis_url": "redis://app:s3cret@db/1?password=s3cret&db=2"},
        "upstreams": {"a": {"targets": ["http://ops:s3cret@127.0.0.1:9101"]}},
        "routes": [
            {
                "fanout": {
                    "backends": {
                        "x": {"url": "http://h/x?user={id}&api_key=s3cret&access_token=s3cret"}
                    }
                }
            },
            {"proxy": {"url": "https://ghp_s3cret@git.example/"}},
        ],
    }
    shown = redact(config)
    assert "s3cret" not in repr(shown)
    assert shown["rate_limits"] == {
        "redis_url": "redis://:***@10.0.0.1:6379/0",
        "redis_timeout": 0.005,
    }
    assert shown["auth"]["redis_url"] == "redis://app:***@db/1?password=***&db=2"
    assert shown["upstreams"]["a"]["targets"] == ["http://ops:***@127.0.0.1:9101"]
    assert shown["routes"][0]["fanout"]["backends"]["x"]["url"] == (
        "http://h/x?user={id}&api_key=***&access_token=***"
    )
    assert shown["routes"][1]["proxy"]["url"] == "https://***@git.example/"


def test_plain_values_are_kept() -> None:
    config = {
        "token_ttl": 900.0,
        "token_path": "/oauth/token",
        "token_env": "GATEWAY_ADMIN_TOKEN",
        "targets": ["http://127.0.0.1:9101"],
        "url": "http://h/orders?user={id}&view=full",
        # A JSON Schema property called "password" is a schema, not a password.
        "body": {"properties": {"password": {"type": "string"}}},
        "fallback": {"token": "s3cret"},
    }
    shown = redact(config)
    assert shown["body"] == config["body"]
    assert shown["fallback"] == {"token": "***"}
    del shown["fallback"], config["fallback"]
    assert shown == config


def test_error_texts_are_scrubbed() -> None:
    text = (
        "routes.yaml:4: upstreams.a.targets[0]: not an http(s) URL: 'http://ops:s3cret@h x'\n"
        "gateway.yaml:9: cache.redis_url: bad redis://:s3cret@db:6379 and https://tok3n@h/"
    )
    scrubbed = scrub(text)
    assert "s3cret" not in scrubbed
    assert "tok3n" not in scrubbed
    assert "http://ops:***@h x" in scrubbed
    assert "routes.yaml:4: upstreams.a.targets[0]" in scrubbed


def test_error_texts_lose_query_credentials_and_passwords_with_an_at_sign() -> None:
    text = (
        "rate_limits.redis_url: cannot connect to redis://h/0?password=s3cret&db=1; "
        "upstream 'http://ops:p@ss@10.0.0.1:9101/x' refused; "
        'value "rediss://:s3cret@r:6379/0" is not a URL'
    )
    shown = scrub(text)
    assert "s3cret" not in shown
    assert "ss@10" not in shown
    assert "redis://h/0?password=***&db=1" in shown
    assert "'http://ops:***@10.0.0.1:9101/x'" in shown
    assert '"rediss://:***@r:6379/0"' in shown
    assert scrub("no url here: a@b and c:d") == "no url here: a@b and c:d"
