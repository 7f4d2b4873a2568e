"""Hosts outside Slurm (bare clusters, PBS or LSF allocations, a site tool's hostfile): `--hosts node1:2,node2:2`
or `--hostfile FILE` in Open MPI's format (`node1 slots=2`, `#` comments). Before anything starts, every
host is asked through the launch agent (ssh, or $HPCTRAIN_RSH) for the job interface's address and free
ports (hpctrain.launch.probe): a host that does not answer, lacks the interface, cannot connect back or has
too few slots is a one-line error, and nothing has started."""
import json
import os
import re
import shlex
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from hpctrain.distribute import network
from hpctrain.errors import UserError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Host:
    name: str
    slots: int = 1


@dataclass(frozen=True)
class Answer:
    name: str            # as the user named it
    address: str         # where its workers are reached: the interface's address, else the name
    ports: tuple
    named_interface: str | None = None  # the interface its own name resolves to


def agent():
    """The ssh-like command that starts processes on other hosts."""
    return os.environ.get("HPCTRAIN_RSH", "ssh")


def _host(name, slots, where):
    if not _NAME.match(name):
        raise UserError(f"{where}: {name!r} is not a host name")
    if slots < 1:
        raise UserError(f"{where}: host {name} needs at least 1 slot, not {slots}")
    return Host(name, slots)


def parse_hosts(text):
    """'node1:2,node2' -> (Host('node1', 2), Host('node2', 1))."""
    hosts = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, slots = item.partition(":")
        if slots and not slots.isdigit():
            raise UserError(f"--hosts {text!r}: {item!r} is not HOST or HOST:SLOTS")
        hosts.append(_host(name, int(slots or 1), f"--hosts {text!r}"))
    return _unique(hosts, f"--hosts {text!r}")


def read_hostfile(path):
    """An Open MPI hostfile: `HOST [slots=N] [max_slots=M]` per line, `#` comments."""
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read hostfile {path}: {e}") from None
    hosts = []
    for number, line in enumerate(lines, 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        where = f"hostfile {path}, line {number}"
        options = dict(word.partition("=")[::2] for word in words[1:])
        unknown = set(options) - {"slots", "max_slots", "max-slots"}
        if unknown or not all(v.isdigit() for v in options.values()):
            raise UserError(f"{where}: expected 'HOST slots=N', not {line.strip()!r}")
        hosts.append(_host(words[0], int(options.get("slots", 1)), where))
    if not hosts:
        raise UserError(f"hostfile {path} names no host")
    return _unique(hosts, f"hostfile {path}")


def _unique(hosts, where):
    seen = set()
    for h in hosts:
        if h.name in seen:
            raise UserError(f"{where}: host {h.name} is named twice")
        seen.add(h.name)
    if not hosts:
        raise UserError(f"{where}: no host")
    return tuple(hosts)


def placement(hosts, n=None):
    """The host of each of `n` workers (default: one per slot), slot by slot as mpirun --map-by slot."""
    slots = [h.name for h in hosts for _ in range(h.slots)]
    n = len(slots) if n is None else n
    if n < 1:
        raise UserError(f"number of workers must be at least 1, not {n}")
    if n > len(slots):
        raise UserError(f"{n} workers do not fit the {len(slots)} slots of "
                        f"{','.join(f'{h.name}:{h.slots}' for h in hosts)}")
    return slots[:n]


def is_local(name):
    return name in ("localhost", "127.0.0.1", socket.gethostname(), socket.gethostname().split(".")[0])


def remote(name, command, options=()):
    """The argument list that runs `command` (a list) on host `name`: itself here, else through the agent,
    which passes one shell string (as ssh does)."""
    if is_local(name):
        return list(command)
    return [agent(), "-o", "BatchMode=yes", *options, name, shlex.join(command)]


def _listener(interface):
    """A TCP listener on this host that the other hosts must be able to connect to, and its address; None
    where this host's address is only a loopback one (then nothing can be checked)."""
    try:
        address = network.address(interface) if interface else socket.gethostbyname(socket.gethostname())
    except (OSError, UserError):
        return None, None
    if address.startswith("127."):
        return None, None
    sock = socket.socket()
    sock.bind((address, 0))
    sock.listen(256)  # connections complete in the kernel; none is accepted
    return sock, f"{address}:{sock.getsockname()[1]}"


def probe(hosts, interface=None, ports=0, timeout=None):
    """{name: Answer} of every host, asked in parallel; a UserError naming the first host that failed: one
    that does not answer, lacks the interface, or cannot open a connection back to this host (its network
    is down; mpirun's daemons and the ranks would hang at the start). `timeout`: seconds a host may take to
    answer, ssh's connection included (default $HPCTRAIN_CONNECT_TIMEOUT, else 30)."""
    timeout = float(timeout or os.environ.get("HPCTRAIN_CONNECT_TIMEOUT") or 30)
    listener, back = _listener(interface)

    def ask(host):
        command = [sys.executable, "-m", "hpctrain.launch.probe", *([interface] if interface else []), str(ports)]
        if back and not is_local(host.name):
            command += ["--reach", back]
        argv = remote(host.name, command, ["-o", f"ConnectTimeout={int(timeout)}"])
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return f"host {host.name} did not answer within {timeout:g} s ({agent()} {host.name})"
        except OSError as e:
            return f"cannot start {argv[0]} to reach host {host.name}: {e.strerror}"
        last = (proc.stdout.strip().splitlines() or [""])[-1]
        try:
            reply = json.loads(last)
        except ValueError:
            said = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
            return f"host {host.name} cannot be reached: {said}"
        if "error" in reply:
            return f"host {host.name}: {reply['error']}"
        if reply.get("unreachable"):
            return f"host {host.name} cannot connect back to {socket.gethostname()} ({back}): {reply['unreachable']}"
        return Answer(host.name, reply["address"] or host.name, tuple(reply["ports"]),
                      reply.get("named_interface"))

    try:
        with ThreadPoolExecutor(max_workers=min(32, len(hosts))) as pool:
            answers = list(pool.map(ask, hosts))
    finally:
        if listener is not None:
            listener.close()
    for a in answers:
        if isinstance(a, str):
            raise UserError(a)
    return {a.name: a for a in answers}


@dataclass(frozen=True)
class Placement:
    """The workers of a multi-host launch: the host of each (slot by slot) and what each host answered."""
    workers: tuple      # host name of each worker
    answers: dict       # host name -> Answer
    interface: str | None

    def counts(self):
        """'node1:2,node2:1': workers per host, for mpirun -H and horovodrun -H."""
        per_host = {}
        for name in self.workers:
            per_host[name] = per_host.get(name, 0) + 1
        return ",".join(f"{name}:{k}" for name, k in per_host.items())

    def addresses(self):
        """ADDRESS:PORT of each worker (TF_CONFIG), each on a port its host found free."""
        taken = {}
        out = []
        for name in self.workers:
            i = taken[name] = taken.get(name, -1) + 1
            answer = self.answers[name]
            out.append(f"{answer.address}:{answer.ports[i]}")
        return out


def place(hosts, n=None, interface=None, ports=False):
    """The Placement of `n` workers on `hosts`, after probing the hosts it uses (with one free port per
    worker when `ports`). Without an interface, the job takes the one every host's own name resolves to,
    if it is the same on all (on hosts with several networks, MPI and Gloo may otherwise try one that
    does not reach the others, and hang)."""
    workers = tuple(placement(hosts, n))
    used = [h for h in hosts if h.name in workers]
    answers = probe(used, interface, ports=max(workers.count(h.name) for h in used) if ports else 0)
    if interface is None and len(used) > 1:
        named = {a.named_interface for a in answers.values()}
        if len(named) == 1 and None not in named and "lo" not in named:
            interface = named.pop()
    return Placement(workers, answers, interface)
