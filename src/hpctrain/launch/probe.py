"""Run on each host before a multi-host launch (`python -m hpctrain.launch.probe [INTERFACE] PORTS`): prints
one JSON line with the host's name, the address its workers are reached at (that of INTERFACE, if given),
PORTS free TCP ports on it and the interface its own name resolves to; or {"error": ...} when the host lacks
the interface."""
import json
import socket
import sys

from hpctrain.distribute import network
from hpctrain.errors import UserError


def answer(interface, ports):
    address = network.address(interface) if interface else None
    socks = [socket.socket() for _ in range(ports)]
    try:
        for s in socks:
            s.bind((address or "", 0))
        free = [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()
    try:  # the network the host's own name resolves to
        named = network.interface_of(socket.gethostbyname(socket.gethostname()))
    except OSError:
        named = None
    return {"host": socket.gethostname(), "address": address, "ports": free, "named_interface": named}


if __name__ == "__main__":
    *interface, ports = sys.argv[1:]
    try:
        print(json.dumps(answer(interface[0] if interface else None, int(ports))))
    except UserError as e:
        print(json.dumps({"error": str(e)}))
