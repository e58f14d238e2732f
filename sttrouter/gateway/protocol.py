"""UnaMentis' ``/v1/audio/stream`` protocol: the public name of the pure wire module.

The messages live in :mod:`sttrouter.wire.gateway`, which the gateway client adapter, this
server and the fake servers all import; this module re-exports them under the gateway's name.
"""

from sttrouter.wire.gateway import *  # noqa: F403
from sttrouter.wire.gateway import __all__ as __all__
