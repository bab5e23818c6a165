"""A free TCP port on 127.0.0.1 for a service of a local stack or test, printed (or returned by
free_port()).

Not one the kernel hands out itself (bind to port 0): those come from the ephemeral range
(/proc/sys/net/ipv4/ip_local_port_range) that outgoing connections also draw their local ports
from, so between picking such a port and the service binding it, any client connection on the
machine could take it. A port below that range is only ever taken by a bind, and is checked
free when picked."""
import random
import socket


def free_port():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = (int(x) for x in f.read().split())
    except (OSError, ValueError):
        lo, hi = 32768, 60999
    first, last = (10000, lo - 1) if lo > 11000 else (hi + 1, 65535)
    for _ in range(1000):
        port = random.randint(first, last)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port in {first}..{last}")


if __name__ == "__main__":
    print(free_port())
