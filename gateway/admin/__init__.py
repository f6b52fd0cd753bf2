"""The admin listener: localhost by default, every call needs the admin token."""
