"""The shared response cache (RFC 9111), in process, bounded in bytes."""
