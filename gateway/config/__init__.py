"""Configuration: YAML files parsed once into typed, frozen objects."""

from .errors import ConfigError, ConfigIssue
from .loader import load_config
from .model import (
    BackendSpec,
    FanoutSpec,
    GatewayConfig,
    ProxySpec,
    RouteSpec,
    UpstreamSpec,
)

__all__ = [
    "BackendSpec",
    "ConfigError",
    "ConfigIssue",
    "FanoutSpec",
    "GatewayConfig",
    "ProxySpec",
    "RouteSpec",
    "UpstreamSpec",
    "load_config",
]
