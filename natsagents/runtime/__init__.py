"""Runtime: hosting agents (activation, mailboxes, dispatch) and calling them."""

from .activation import Activation, ActivationState
from .caller import Caller, CallerSettings
from .host import Host, HostSettings

__all__ = ["Activation", "ActivationState", "Caller", "CallerSettings", "Host", "HostSettings"]
