"""Unit tests of sessions/rawpipe.py's reply loop on redis-py's own hiredis parser (no server):
the bytes of a pipeline's replies arrive in pieces on a real asyncio stream."""

from __future__ import annotations

import asyncio
from typing import Any

import hiredis
import pytest
from redis._parsers.hiredis import NOT_ENOUGH_DATA, _AsyncHiredisParser
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, ResponseError

from sessions.rawpipe import _read_all


def parser_on(stream: asyncio.StreamReader) -> _AsyncHiredisParser:
    parser = _AsyncHiredisParser(socket_read_size=4)  # tiny reads: replies span several
    parser._stream = stream
    parser._reader = hiredis.Reader(  # type: ignore[assignment]  # as on_connect sets it
        protocolError=InvalidResponse,
        replyError=parser.parse_error,
        notEnoughData=NOT_ENOUGH_DATA,
    )
    parser._connected = True
    return parser


def test_replies_split_across_reads_come_back_raw_and_in_order() -> None:
    async def main() -> list[Any]:
        stream = asyncio.StreamReader()
        parser = parser_on(stream)
        wire = b"*2\r\n$1\r\na\r\n,1.5\r\n:7\r\n-ERR no such key\r\n$-1\r\n"
        replies: list[Any] = []
        reading = asyncio.create_task(_read_all(parser, 4, replies))
        for at in range(0, len(wire), 5):  # the bytes trickle in
            stream.feed_data(wire[at : at + 5])
            await asyncio.sleep(0)
        await reading
        return replies

    replies = asyncio.run(main())
    assert replies[:2] == [[b"a", 1.5], 7]
    assert isinstance(replies[2], ResponseError)  # an error reply, in its command's place
    assert replies[3] is None


def test_a_closed_connection_raises_instead_of_waiting() -> None:
    async def main() -> None:
        stream = asyncio.StreamReader()
        parser = parser_on(stream)
        stream.feed_data(b":1\r\n")
        stream.feed_eof()
        with pytest.raises(RedisConnectionError):
            await _read_all(parser, 2, [])

    asyncio.run(main())
