"""The server's configuration: its values (model.py) and how a YAML file becomes them (parse.py).

This package's names are the config format's API. MatchRules, HeaderRule and ConfigError live where
they are used and are named here too, as types of the values and of the errors.
"""

from extproc.config.model import (
    LOG_FORMATS,
    LOG_LEVELS,
    MAX_RETRIES,
    OTLP_HTTP_TRACES_PATH,
    TRACING_PROTOCOLS,
    BreakerConfig,
    CandidateConfig,
    Config,
    Encoding,
    FailurePolicy,
    ListenAddress,
    PluginConfig,
    RolloutMode,
    ServerConfig,
    StateBackend,
    StateConfig,
    TlsConfig,
    TracingConfig,
    default_memory_limit_mb,
)
from extproc.config.parse import MAX_CONFIG_BYTES, load_config, parse_config, parse_listen_address
from extproc.errors import ConfigError
from extproc.plugins.match import HeaderRule, MatchRules

__all__ = [
    "LOG_FORMATS",
    "LOG_LEVELS",
    "MAX_CONFIG_BYTES",
    "MAX_RETRIES",
    "OTLP_HTTP_TRACES_PATH",
    "TRACING_PROTOCOLS",
    "BreakerConfig",
    "CandidateConfig",
    "Config",
    "ConfigError",
    "Encoding",
    "FailurePolicy",
    "HeaderRule",
    "ListenAddress",
    "MatchRules",
    "PluginConfig",
    "RolloutMode",
    "ServerConfig",
    "StateBackend",
    "StateConfig",
    "TlsConfig",
    "TracingConfig",
    "default_memory_limit_mb",
    "load_config",
    "parse_config",
    "parse_listen_address",
]
