"""The network interface a job talks over: one setting (`distribute.interface`, else $HPCTRAIN_INTERFACE)
for every transport. Each transport's own variable for it is here and nowhere else."""
import fcntl
import os
import socket
import struct

from hpctrain.errors import UserError, one_of

# Variable -> the transport that reads it. Setting all of them is harmless: a library reads only its own.
INTERFACE_VARIABLES = {
    "OMPI_MCA_btl_tcp_if_include": "Open MPI's TCP transport between ranks",
    "OMPI_MCA_oob_tcp_if_include": "Open MPI's runtime (mpirun <-> its daemons)",
    "HOROVOD_GLOO_IFACE": "Horovod over Gloo",
    "GLOO_SOCKET_IFNAME": "Gloo (Horovod, tf.distribute)",
    "NCCL_SOCKET_IFNAME": "NCCL's bootstrap and socket transport",
    "FI_TCP_IFACE": "libfabric's tcp provider (MPICH ch4:ofi, Intel MPI)",
    "FI_SOCKETS_IFACE": "libfabric's sockets provider",
}


def chosen(setting=None, env=None):
    """The interface of a job: the spec's setting, else $HPCTRAIN_INTERFACE, else None (the libraries choose)."""
    env = os.environ if env is None else env
    return setting or env.get("HPCTRAIN_INTERFACE") or None


def variables(interface):
    """The environment that makes every transport use `interface` ({} for None)."""
    return {name: interface for name in INTERFACE_VARIABLES} if interface else {}


def apply(interface, env=None):
    """Sets the transports' variables in this process (values already set by the user stay), after
    checking that this host has the interface."""
    if not interface:
        return
    address(interface)
    env = os.environ if env is None else env
    for name, value in variables(interface).items():
        env.setdefault(name, value)


def address(interface):
    """The IPv4 address of `interface` on this host; a UserError naming the host's interfaces if it has
    no such interface or no IPv4 address on it."""
    names = [name for _, name in socket.if_nameindex()]
    host = socket.gethostname()
    if interface not in names:
        raise UserError(f"interface {interface} not found on {host} (it has {one_of(names)})")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:  # SIOCGIFADDR
            packed = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", interface.encode()[:15]))
        except OSError:
            raise UserError(f"interface {interface} on {host} has no IPv4 address") from None
    return socket.inet_ntoa(packed[20:24])


def interface_of(ip):
    """The name of this host's interface that holds IPv4 address `ip`, or None."""
    for _, name in socket.if_nameindex():
        try:
            if address(name) == ip:
                return name
        except UserError:
            continue
    return None
