"""Free ports are picked below the kernel's ephemeral range, distinct, and bindable."""

from __future__ import annotations

import socket

from tollway.launcher.processes import ephemeral_range, free_ports


def test_free_ports_are_distinct_bindable_and_below_the_ephemeral_range() -> None:
    low, high = ephemeral_range()
    assert 0 < low <= high
    ports = free_ports(12)
    assert len(set(ports)) == 12
    assert all(10000 <= p < low for p in ports), ports
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_a_port_someone_listens_on_is_never_picked() -> None:
    low, _ = ephemeral_range()
    held = []
    try:
        # Hold most of a small window so that the picker must skip what is taken.
        for port in range(10000, min(low, 10000 + 2000)):
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", port))
                s.listen()
            except OSError:
                s.close()
                continue
            held.append(s)
        taken = {s.getsockname()[1] for s in held}
        assert not set(free_ports(8)) & taken
    finally:
        for s in held:
            s.close()
