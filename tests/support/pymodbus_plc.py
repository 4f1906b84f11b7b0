"""A PLC for the integration tests: pymodbus's real Modbus TCP server.

pymodbus parses one ADU per received TCP segment (see tests/fixtures/README.md): a proxy that
coalesces pipelined requests into one write loses answers from it. The gateway must not.

Binds 127.0.0.1 port 0, prints "READY <port>" on stdout (the test's readiness signal), serves
until stdin closes (so it dies with the test that started it). Process image as the fixtures'
device: HR[i] = i, IR[i] = 1000 + i, coils 0, DI[i] = i % 2 for i in 0..999, unit 1.
"""
import asyncio
import sys

from pymodbus.datastore import (
    ModbusDeviceContext,
    ModbusSequentialDataBlock,
    ModbusServerContext,
)
from pymodbus.server import ModbusTcpServer


async def main() -> None:
    n = 1000
    # pymodbus data blocks are 1-based internally: address 0 on the wire is index 1.
    device = ModbusDeviceContext(
        di=ModbusSequentialDataBlock(1, [i % 2 for i in range(n)]),
        co=ModbusSequentialDataBlock(1, [0] * n),
        hr=ModbusSequentialDataBlock(1, list(range(n))),
        ir=ModbusSequentialDataBlock(1, [1000 + i for i in range(n)]),
    )
    context = ModbusServerContext(devices={1: device}, single=False)
    server = ModbusTcpServer(context, address=("127.0.0.1", 0))
    task = asyncio.create_task(server.serve_forever())
    for _ in range(500):
        transport = getattr(server, "transport", None)
        if transport is not None and getattr(transport, "sockets", None):
            break
        await asyncio.sleep(0.01)
    port = server.transport.sockets[0].getsockname()[1]
    print(f"READY {port}", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    await server.shutdown()
    task.cancel()


if __name__ == "__main__":
    asyncio.run(main())
