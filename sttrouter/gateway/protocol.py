"""UnaMentis' ``/v1/audio/stream`` protocol: the public name of the pure wire module.

The messages live in :mod:`sttrouter.providers._gateway_wire` because both sides use them: the
``glm_server`` adapter (engine layer) and this gateway server (a face above it). Layers point
down, so the shared module sits in the lower one and is re-exported here.
"""

from sttrouter.providers._gateway_wire import *  # noqa: F403
from sttrouter.providers._gateway_wire import __all__ as __all__
