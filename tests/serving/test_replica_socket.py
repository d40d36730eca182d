"""The replica's listening socket gives accepted connections TCP_NODELAY (through asyncio, as
uvicorn serves it): without it every response waits out the client's delayed ACK."""

from __future__ import annotations

import asyncio
import socket

from underlay.serving.replica import listen_socket


def test_connections_accepted_on_the_replica_socket_have_nodelay() -> None:
    async def main() -> int:
        sock, port = listen_socket()
        seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                accepted = transport.get_extra_info("socket")
                seen.set_result(accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()

        server = await asyncio.get_running_loop().create_server(Probe, sock=sock)
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            return await asyncio.wait_for(seen, 10)
        finally:
            writer.close()
            server.close()
            await server.wait_closed()

    assert asyncio.run(main()) != 0
