"""The bus contract's exception hierarchy."""


class FabError(Exception):
    """Base class of every error this project raises on purpose."""


class ContractError(FabError):
    """topics.yaml or a topic/id does not satisfy the contract."""


class MessageError(FabError):
    """A payload is malformed, oversized, of the wrong type or a duplicate."""


class ConfigError(FabError):
    """A configuration file is invalid; the message names each bad key path."""


class NotConnectedError(FabError):
    """The MQTT client is not connected."""


class DeliveryTimeout(FabError):
    """A QoS 1 publish was not acknowledged in time."""
