"""Run on each host before a multi-host launch (`python -m hpctrain.launch.probe [INTERFACE] PORTS [--reach
ADDRESS:PORT]`): prints one JSON line with the address its workers are reached at (that of INTERFACE, if
given), PORTS free TCP ports on it, the interface its own name resolves to and whether it could open a
connection to the launching host's ADDRESS:PORT; or {"error": ...} when the host lacks the interface."""
import json
import socket
import sys

from hpctrain.distribute import network
from hpctrain.errors import UserError

REACH_TIMEOUT = 5.0  # seconds to open a connection back to the launching host


def answer(interface, ports, reach=None):
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
    unreachable = None
    if reach:  # the launching host, as mpirun's daemons and the ranks will connect to it
        host, _, port = reach.rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=REACH_TIMEOUT).close()
        except OSError as e:
            unreachable = "timed out" if isinstance(e, TimeoutError) else (e.strerror or str(e))
    return {"address": address, "ports": free, "named_interface": named,
            "unreachable": unreachable}


if __name__ == "__main__":
    args = sys.argv[1:]
    reach = args[args.index("--reach") + 1] if "--reach" in args else None
    *interface, ports = args[:args.index("--reach")] if reach else args
    try:
        print(json.dumps(answer(interface[0] if interface else None, int(ports), reach)))
    except UserError as e:
        print(json.dumps({"error": str(e)}))
