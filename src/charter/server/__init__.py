"""The guarding proxy: an OpenAI-compatible server that enforces the guard on input and output."""

from charter.server.app import create_app
from charter.server.config import ConfigError, ServerConfig, check_bind, hash_key, load_config
from charter.server.runner import ServerThread

__all__ = ["ConfigError", "ServerConfig", "ServerThread", "check_bind", "create_app", "hash_key", "load_config"]
