"""fabbus: the bus contract shared by every process (topics, messages, MQTT client, ACL)."""

from fabbus.errors import ConfigError, ContractError, FabError, MessageError

__all__ = ["ConfigError", "ContractError", "FabError", "MessageError"]
