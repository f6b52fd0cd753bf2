"""Authentication: API keys, JWTs (the gateway's own and outside issuers'), OAuth2."""
