"""The admin listener: localhost by default; every call but the probes needs the admin
token. ``app.py`` lists the operations; docs/admin-api.md describes them."""
