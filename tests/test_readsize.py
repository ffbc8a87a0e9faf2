"""Transports read at most 64 KiB at a time, and still receive the largest datagram and long streams whole."""

from __future__ import annotations

import asyncio

from voice.readsize import READ_SIZE, small_reads


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.got: asyncio.Queue[bytes] = asyncio.Queue()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        small_reads(transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.got.put_nowait(data)


async def test_a_udp_transport_reads_64_kib_and_gets_the_largest_datagram_whole() -> None:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(_Datagrams, local_addr=("127.0.0.1", 0))
    sender, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
    try:
        assert transport.max_size == READ_SIZE  # type: ignore[attr-defined]
        largest = bytes(range(256)) * 255 + bytes(range(227))  # 65 507 bytes: the IPv4 UDP maximum
        sender.sendto(largest, transport.get_extra_info("sockname"))
        assert await asyncio.wait_for(protocol.got.get(), 5) == largest
    finally:
        transport.close()
        sender.close()


async def test_a_tcp_stream_longer_than_a_read_arrives_whole() -> None:
    received = bytearray()
    done = asyncio.Event()
    sizes: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        small_reads(writer.transport)
        sizes.append(writer.transport.max_size)  # type: ignore[attr-defined]
        while chunk := await reader.read(1 << 20):
            received.extend(chunk)
        done.set()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    payload = bytes(range(256)) * 4096  # 1 MiB
    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    await writer.drain()
    writer.close()
    await asyncio.wait_for(done.wait(), 5)
    server.close()
    await server.wait_closed()
    assert sizes == [READ_SIZE]
    assert bytes(received) == payload


def test_a_transport_without_max_size_is_left_alone() -> None:
    class Other(asyncio.BaseTransport):
        pass

    other = Other()
    small_reads(other)
    small_reads(None)
    assert not hasattr(other, "max_size")
