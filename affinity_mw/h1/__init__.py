"""The built-in HTTP/1.1 client for forwarding under asyncio (``AFFINITY_TRANSPORT=asyncio``, the ASGI default).

:mod:`.wire` holds the protocol rules (the request head it writes, the responses it accepts and how they are
framed); :mod:`.pool` the connections, their pool and the transport the forward drives.
"""

from .pool import AsyncioTransport

__all__ = ["AsyncioTransport"]
