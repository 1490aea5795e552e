"""A loopback HTTP proxy that makes a local S3 server (moto) behave like a
remote one: every request waits ``delay`` seconds before it is forwarded
(the time to first byte of a real S3 request, 10-30 ms), and each
connection carries at most ``rate`` bytes per second in each direction
(one S3 connection: about 100 MB/s).  It counts the requests it forwards.

Run as a process (``python _latency_proxy.py UPSTREAM_PORT DELAY_MS RATE_MBPS``):
it prints its port on stdout and serves until stdin closes.  ``GET
/__proxy/stats`` answers the counters as JSON, ``POST /__proxy/reset``
zeroes them (neither is forwarded).

HTTP/1.1 with keep-alive: requests are found in the client's byte stream
by their headers and Content-Length (or chunked encoding), so each one is
delayed separately; response bytes are only paced, never parsed.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter

READ = 256 * 1024


class Pacer:
    """At most ``rate`` bytes per second through one direction of one connection."""

    def __init__(self, rate: float) -> None:
        self.rate, self.t = rate, 0.0

    async def pace(self, n: int) -> None:
        now = asyncio.get_running_loop().time()
        self.t = max(self.t, now) + n / self.rate
        if self.t - now > 0.0005:
            await asyncio.sleep(self.t - now)


class Proxy:
    def __init__(self, upstream_port: int, delay: float, rate: float) -> None:
        self.upstream_port, self.delay, self.rate = upstream_port, delay, rate
        self.requests: Counter[str] = Counter()
        self.bytes_up = self.bytes_down = 0

    def stats(self) -> dict[str, object]:
        return {"requests": sum(self.requests.values()), "by_method": dict(self.requests),
                "bytes_up": self.bytes_up, "bytes_down": self.bytes_down}

    async def _answer(self, writer: asyncio.StreamWriter, method: str, path: str) -> None:
        if method == "POST" and path.startswith("/__proxy/reset"):
            self.requests.clear()
            self.bytes_up = self.bytes_down = 0
        body = json.dumps(self.stats()).encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                     b"Connection: close\r\n\r\n%s" % (len(body), body))
        await writer.drain()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pacer: Pacer) -> None:
        try:
            while data := await reader.read(READ):
                await pacer.pace(len(data))
                self.bytes_down += len(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _copy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int, pacer: Pacer) -> None:
        while n > 0:
            data = await reader.read(min(READ, n))
            if not data:
                raise ConnectionError("client closed mid-body")
            n -= len(data)
            await pacer.pace(len(data))
            self.bytes_up += len(data)
            writer.write(data)
            await writer.drain()

    async def handle(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        ureader = uwriter = pump = None
        up = Pacer(self.rate)
        try:
            while True:
                try:
                    head = await creader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
                if path.startswith("/__proxy/"):
                    await self._answer(cwriter, method, path)
                    return
                if uwriter is None:
                    ureader, uwriter = await asyncio.open_connection("127.0.0.1", self.upstream_port)
                    pump = asyncio.create_task(self._pump(ureader, cwriter, Pacer(self.rate)))
                self.requests[method] += 1
                await asyncio.sleep(self.delay)  # time to first byte
                uwriter.write(head)
                if "chunked" in headers.get("transfer-encoding", "").lower():
                    while True:
                        size_line = await creader.readuntil(b"\r\n")
                        size = int(size_line.split(b";")[0], 16)
                        uwriter.write(size_line)
                        await self._copy(creader, uwriter, size + 2, up)
                        if size == 0:
                            break
                else:
                    await self._copy(creader, uwriter, int(headers.get("content-length", 0)), up)
                await uwriter.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            if pump is not None:
                await asyncio.sleep(0)
            if uwriter is not None:
                uwriter.close()
            if pump is not None:
                with_timeout = asyncio.wait_for(pump, 5)
                try:
                    await with_timeout
                except (asyncio.TimeoutError, asyncio.CancelledError):
                    pass
            cwriter.close()


async def serve(upstream_port: int, delay: float, rate: float) -> None:
    proxy = Proxy(upstream_port, delay, rate)
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0, limit=1 << 20)
    print(server.sockets[0].getsockname()[1], flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # until the parent goes away
    server.close()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1]), float(sys.argv[2]) / 1000, float(sys.argv[3]) * 1e6))
