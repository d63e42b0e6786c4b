#!/usr/bin/env python3
"""Open-loop load on GET /health: RATE requests/s for SECONDS over keep-alive
connections; prints latency percentiles (ms). Standard library only.

    health-load.py http://127.0.0.1:9187/health 500 10
"""
import asyncio
import sys
import time
from urllib.parse import urlparse


async def worker(host, port, path, schedule, latencies, errors):
    reader, writer = await asyncio.open_connection(host, port)
    request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    for due in schedule:
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            # Open loop: latency counts from when the request was due, so a
            # stalled server cannot hide its queueing.
            latencies.append((time.perf_counter() - due) * 1000)
        except Exception:  # noqa: BLE001 - counted, reported
            errors.append(1)
            reader, writer = await asyncio.open_connection(host, port)
    writer.close()


async def main():
    url, rate, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    u = urlparse(url)
    conns = 20
    t0 = time.perf_counter() + 0.2
    total = int(rate * seconds)
    slots = [t0 + i / rate for i in range(total)]
    latencies, errors = [], []
    await asyncio.gather(*[
        worker(u.hostname, u.port, u.path, slots[c::conns], latencies, errors) for c in range(conns)
    ])
    latencies.sort()
    pct = lambda p: latencies[min(len(latencies) - 1, int(len(latencies) * p))]
    print(f"requests {len(latencies)} errors {len(errors)} p50 {pct(0.50):.2f} ms p99 {pct(0.99):.2f} ms max {latencies[-1]:.2f} ms")


asyncio.run(main())
