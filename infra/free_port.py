"""A free TCP port on 127.0.0.1 for a service of a local stack or test, printed (or returned by
free_port()).

Not one the kernel hands out itself (bind to port 0): those come from the ephemeral range
(/proc/sys/net/ipv4/ip_local_port_range) that outgoing connections also draw their local ports
from, so between picking such a port and the service binding it, any client connection on the
machine could take it. A port below that range is only ever taken by a bind, and is checked
free when picked. Ports picked but not bound yet are remembered — in this process, and in the
file given with --taken (one port a line; infra/stack.sh keeps one per stack) — so two services
of one stack never get the same port.

  python3 infra/free_port.py [--taken FILE]"""
import random
import socket
import sys

_picked = set()


def free_port(taken_file=None):
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = (int(x) for x in f.read().split())
    except (OSError, ValueError):
        lo, hi = 32768, 60999
    first, last = (10000, lo - 1) if lo > 11000 else (hi + 1, 65535)
    if first > last:  # the ephemeral range covers everything from 11000 up: any unbound port
        first, last = 1024, 65535
    taken = set(_picked)
    if taken_file:
        try:
            with open(taken_file) as f:
                taken |= {int(line) for line in f if line.strip()}
        except OSError:
            pass
    for _ in range(1000):
        port = random.randint(first, last)
        if port in taken:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _picked.add(port)
        if taken_file:
            with open(taken_file, "a") as f:
                f.write(f"{port}\n")
        return port
    raise RuntimeError(f"no free port in {first}..{last}")


if __name__ == "__main__":
    args = sys.argv[1:]
    print(free_port(args[1] if len(args) == 2 and args[0] == "--taken" else None))
