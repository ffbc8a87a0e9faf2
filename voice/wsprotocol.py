"""uvicorn's sans-I/O WebSocket protocol, tuned for media streams (the service's and the engine's sockets).

uvicorn's ``websockets-sansio`` protocol stops reading the socket after every message it queues for the
application and starts again once the application has taken it: two ``epoll_ctl`` system calls per
message. A call receives a message every 20 ms (caller audio, media events), so at a hundred calls that is
ten thousand system calls a second spent on flow control that is almost never needed.

:class:`StreamingWSProtocol` keeps the same flow control but with slack: reading pauses only when
:data:`QUEUE_HIGH_WATER` messages wait for the application (it has fallen behind by a few hundred ms of
audio), and resumes, as before, once it has emptied the queue. Everything else is uvicorn's.
"""

from __future__ import annotations

from typing import Final

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

__all__ = ["QUEUE_HIGH_WATER", "StreamingWSProtocol"]

QUEUE_HIGH_WATER: Final = 32
"""Messages waiting for the application before the socket stops being read (640 ms of 20 ms frames)."""


class StreamingWSProtocol(WebSocketsSansIOProtocol):
    """``WebSocketsSansIOProtocol`` that pauses reading only when the application falls behind."""

    def send_receive_event_to_app(self) -> None:
        # The parent pauses reading after queueing each message unless reading is already paused: let it
        # believe so, then pause for real only when the queue is long.
        paused = self.read_paused
        self.read_paused = True
        try:
            super().send_receive_event_to_app()
        finally:
            self.read_paused = paused
        if not paused and self.queue.qsize() >= QUEUE_HIGH_WATER:
            self.read_paused = True
            self.transport.pause_reading()
