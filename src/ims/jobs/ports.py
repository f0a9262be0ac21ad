"""SSH ports for jobs: one per job, from a range outside the kernel's ephemeral ports.

The port is chosen when the job is created, so `connection_info` names it from the start. Ports from
the ephemeral range could be taken meanwhile by any outgoing connection (to S3, to IMS); a fixed range
(IMS_JOB_SSH_PORTS) avoids that. Ports of unfinished jobs are never handed out twice.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Iterable

from ims.domain.errors import Unavailable


def parse_range(text: str) -> range:
    low, _, high = text.partition("-")
    try:
        first, last = int(low), int(high or low)
    except ValueError:
        raise ValueError(f"not a port range: {text!r} (expected e.g. 20000-20999)") from None
    if not 1 <= first <= last <= 65535:
        raise ValueError(f"not a port range: {text!r}")
    return range(first, last + 1)


def bindable(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def pick_port(ports: range, used: Iterable[int], listen: str) -> int:
    """A port no unfinished job holds and nothing on this host listens on; random, so replicas rarely collide."""
    taken = set(used)
    candidates = [port for port in ports if port not in taken]
    random.shuffle(candidates)
    for port in candidates:
        if bindable(listen, port):
            return port
    raise Unavailable(
        f"No free SSH port for the job in {ports.start}-{ports.stop - 1} (IMS_JOB_SSH_PORTS): "
        "delete finished jobs or widen the range."
    )
