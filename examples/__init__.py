"""Sample downstream services for trying the gateway out."""
