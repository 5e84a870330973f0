"""Free ports are picked below the kernel's ephemeral range, distinct, bindable, and claimed against other pickers."""

from __future__ import annotations

import json
import random
import socket
import subprocess
import sys
from pathlib import Path

from tollway.launcher.processes import (
    DERIVED_OFFSETS,
    claim_ports,
    ephemeral_range,
    free_ports,
    port_claims,
    port_free,
)


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


def _span(width: int, margin: int = 0) -> range:
    """A window of ports below the ephemeral range that nobody listens on now, and whose ports and
    the ports derived from them nobody has claimed (another test worker may be picking); ``margin``
    ports below it stay above 10000."""
    low, _ = ephemeral_range()
    while True:
        base = random.randrange(10000 + margin, low - width - max(DERIVED_OFFSETS))
        span = range(base, base + width)
        with port_claims() as claims:
            claimed = any(claims.held(p + o) for p in span for o in (0, *DERIVED_OFFSETS))
        if not claimed and all(port_free("127.0.0.1", p) for p in span):
            return span


def _pick_in_child(count: int, span: range) -> list[int]:
    code = (
        "import json, sys\n"
        "from tollway.launcher.processes import free_ports\n"
        f"print(json.dumps(free_ports({count}, span=range({span.start}, {span.stop}))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_a_port_another_live_process_picked_is_not_picked_again_before_it_is_bound() -> None:
    # Nothing listens on the ports between the pick and the bind; only the claim keeps a second
    # picker (another test worker, a canary controller) off them.
    span = _span(8)
    mine = free_ports(4, span=span)
    assert set(mine) <= set(span)
    theirs = _pick_in_child(4, span)
    assert not set(mine) & set(theirs), (mine, theirs)
    # And this process does not hand out its own unbound picks twice.
    again = free_ports(4, span=span)
    assert not set(mine) & set(again), (mine, again)


def test_the_picks_of_a_process_that_exited_are_free_again() -> None:
    span = _span(6)
    theirs = _pick_in_child(6, span)
    assert sorted(theirs) == list(span)
    assert sorted(free_ports(6, span=span)) == list(span)


def test_picks_go_on_unclaimed_where_the_claims_folder_cannot_be_made(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    with port_claims(blocker / "claims") as claims:
        assert not claims.held(12345)
        claims.claim(12345)
        assert not claims.held(12345)


def test_ports_a_stack_derives_are_claimed_like_picked_ones() -> None:
    span = _span(4)
    claim_ports(span)
    theirs = _pick_in_child(2, span)
    assert not set(theirs) & set(span), theirs


def test_a_port_derived_from_a_live_process_pick_is_never_picked() -> None:
    # Another stack's replica (port + 100) or metrics (port + 1000) port is bound only when that
    # stack starts; picking it in the meantime made two stacks collide (a CI failure).
    span = _span(1, margin=max(DERIVED_OFFSETS))
    code = (
        "import sys\n"
        "from tollway.launcher.processes import free_ports\n"
        f"print(free_ports(1, span=range({span.start}, {span.stop}))[0], flush=True)\n"
        "sys.stdin.read()\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        theirs = int(holder.stdout.readline())
        for offset in DERIVED_OFFSETS:
            derived = theirs + offset
            assert free_ports(1, span=range(derived, derived + 1)) != [derived], offset
        # Nor a port from which a stack would derive the holder's pick.
        for offset in DERIVED_OFFSETS:
            below = theirs - offset
            assert free_ports(1, span=range(below, below + 1)) != [below], offset
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=10)


def test_a_pick_claims_the_ports_derived_from_it() -> None:
    span = _span(1)
    (mine,) = free_ports(1, span=span)
    with port_claims() as claims:
        assert all(claims.held(mine + o) for o in DERIVED_OFFSETS)


def test_one_call_never_picks_a_port_derived_from_another_of_its_picks() -> None:
    # A stack's ports come from one call: openai_compat was picked on the embedding service's
    # metrics port (its port + 1000), and could never bind it.
    metrics = max(DERIVED_OFFSETS)
    base = _span(1, margin=0).start
    span = [base, base + metrics]
    while not all(port_free("127.0.0.1", p) for p in span):
        base = _span(1, margin=0).start
        span = [base, base + metrics]
    picked = free_ports(2, span=range(base, base + metrics + 1, metrics))
    assert len(set(picked)) == 2
    derived = {p + o for p in picked for o in DERIVED_OFFSETS}
    assert not set(picked) & derived, picked
