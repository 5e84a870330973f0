"""The jobs service's rules without servers: webhook URLs and signatures, backoff, names, priorities,
on-behalf-of tokens, the config's checks, and the Generate-to-Complete request mapping."""

from __future__ import annotations

import random

import pytest

from tollway.common import delegation
from tollway.gateway.v1 import gateway_pb2
from tollway.jobs import webhooks
from tollway.jobs.config import JobsConfig
from tollway.jobs.gateway_client import complete_request, request_id
from tollway.jobs.jobs import PRIORITY_BATCH, parse_name, resolve_priority
from tollway.jobs.types import Job, Owner, State, new_id
from tollway.jobs.worker import RunFailure
from tollway.mesh.errors import InvalidArgument

SECRET = b"0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize(
    ("url", "addresses", "why"),
    [
        ("ftp://example.com/x", ["93.184.216.34"], "http:// or https://"),
        ("file:///etc/passwd", [], "http:// or https://"),
        ("http:///nohost", [], "no host"),
        ("http://example.com:99999/", [], "port"),
        ("http://internal/", ["10.0.0.7"], "10.0.0.7"),
        ("http://x/", ["127.0.0.1"], "loopback"),
        ("http://x/", ["169.254.169.254"], "169.254.169.254"),
        ("http://x/", ["::1"], "::1"),
        ("http://x/", ["fe80::1"], "fe80::1"),
        ("http://x/", ["::ffff:192.168.1.1"], "192.168.1.1"),
        ("http://x/", ["93.184.216.34", "192.168.1.1"], "192.168.1.1"),  # any bad address refuses
        ("http://x/", [], "does not resolve"),
        ("http://" + "a" * 3000 + ".com/", [], "longer than"),
    ],
)
def test_forbidden_webhook_urls_are_invalid_argument(url: str, addresses: list[str], why: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        webhooks.parse_url(url)
        webhooks.check_addresses(url, addresses, ())
    assert why in err.value.message
    assert err.value.violations[0][0] == "webhook_url"


def test_public_addresses_pass_and_allowed_ranges_open_private_ones() -> None:
    webhooks.check_addresses("https://example.com/hook", ["93.184.216.34", "2606:2800:220:1::1"], ())
    allow = webhooks.UrlPolicy(["127.0.0.0/8"]).allow
    webhooks.check_addresses("http://127.0.0.1:9/hook", ["127.0.0.1"], allow)
    with pytest.raises(InvalidArgument):
        webhooks.check_addresses("http://10.0.0.1/hook", ["10.0.0.1"], allow)


async def test_url_policy_resolves_names() -> None:
    policy = webhooks.UrlPolicy([])
    with pytest.raises(InvalidArgument) as err:
        await policy.check("http://localhost:8080/hook")
    assert "loopback" in err.value.message
    await webhooks.UrlPolicy(["127.0.0.0/8", "::1/128"]).check("http://localhost:8080/hook")


def test_signature_round_trip_and_what_breaks_it() -> None:
    body = b'{"name":"jobs/x"}'
    headers = webhooks.signed_headers(SECRET, body, "jobs/x", now_s=1_000_000)
    ts, sig = headers[webhooks.TIMESTAMP_HEADER], headers[webhooks.SIGNATURE_HEADER]
    assert sig.startswith("v1=")
    assert webhooks.verify(SECRET, body, ts, sig, now_s=1_000_010)
    assert not webhooks.verify(SECRET, body + b" ", ts, sig, now_s=1_000_010)  # body changed
    assert not webhooks.verify(b"another secret", body, ts, sig, now_s=1_000_010)
    assert not webhooks.verify(SECRET, body, str(int(ts) + 1), sig, now_s=1_000_010)  # timestamp is signed
    assert not webhooks.verify(SECRET, body, ts, sig, now_s=1_000_000 + 301)  # a replay past tolerance
    assert not webhooks.verify(SECRET, body, "soon", sig)


def test_backoff_doubles_is_capped_and_jittered() -> None:
    rng = random.Random(7)
    waits = [webhooks.backoff_ms(n, 1000, 10_000, rng) for n in range(1, 7)]
    for n, wait in enumerate(waits, start=1):
        base = min(10_000, 1000 * 2 ** (n - 1))
        assert base <= wait <= base * 1.25


def test_delegation_tokens_verify_and_refuse_forgeries() -> None:
    token = delegation.mint(SECRET, "acme", "tw-abc123", "f" * 64, "jobs/1")
    d = delegation.verify(SECRET, token)
    assert (d.tenant, d.key_id, d.key_sha256, d.subject) == ("acme", "tw-abc123", "f" * 64, "jobs/1")
    with pytest.raises(delegation.DelegationError, match="signature"):
        delegation.verify(b"x" * 32, token)
    payload, _, mac = token.removeprefix(delegation.PREFIX).rpartition(".")
    with pytest.raises(delegation.DelegationError, match="signature"):
        delegation.verify(SECRET, f"{delegation.PREFIX}{payload[:-2]}AA.{mac}")
    with pytest.raises(delegation.DelegationError, match="expired"):
        delegation.verify(SECRET, token, now_s=d.expires_s + 1)
    with pytest.raises(delegation.DelegationError, match="malformed"):
        delegation.verify(SECRET, delegation.PREFIX + "nodot")
    with pytest.raises(ValueError, match="TOLLWAY_DELEGATION_SECRET"):
        delegation.mint(b"short", "acme", "k", "h", "s")


def test_the_gateway_stores_keys_under_the_same_digest() -> None:
    from tollway.gateway.auth import hash_key

    assert delegation.key_sha256("tw-some-key") == hash_key("tw-some-key")


def test_names_parse_and_bad_ones_are_named() -> None:
    ident = new_id()
    assert parse_name(f"jobs/{ident}", "jobs") == ident
    for bad in ("", "jobs/", "jobs/XYZ", f"jobbatches/{ident}", f"jobs/{ident}/x"):
        with pytest.raises(InvalidArgument) as err:
            parse_name(bad, "jobs")
        assert "jobs/<id>" in err.value.message


def test_ids_sort_by_creation_time() -> None:
    first = new_id()
    later = [new_id() for _ in range(500)]
    assert all(i[:12] >= first[:12] for i in later)
    # Many fall in one millisecond: their order is still the order they were made in.
    assert [first, *later] == sorted([first, *later]) and len(set(later)) == 500


def test_priority_is_the_first_set_else_batch() -> None:
    assert resolve_priority(0, 0) == PRIORITY_BATCH
    assert resolve_priority(0, gateway_pb2.PRIORITY_INTERACTIVE) == gateway_pb2.PRIORITY_INTERACTIVE
    assert (
        resolve_priority(gateway_pb2.PRIORITY_NORMAL, gateway_pb2.PRIORITY_INTERACTIVE) == gateway_pb2.PRIORITY_NORMAL
    )
    assert PRIORITY_BATCH == gateway_pb2.PRIORITY_BATCH


def test_generate_and_complete_requests_share_every_field() -> None:
    """A job stores a GenerateRequest and runs it as a CompleteRequest by its wire form: a field
    added to one and not the other would be dropped silently. This fails first."""

    def shape(message: type) -> dict[str, tuple[object, ...]]:
        return {
            f.name: (f.number, f.type, f.is_repeated, f.message_type and f.message_type.full_name)
            for f in message.DESCRIPTOR.fields  # type: ignore[attr-defined]
        }

    assert shape(gateway_pb2.GenerateRequest) == shape(gateway_pb2.CompleteRequest)


def test_a_job_runs_under_its_own_request_id_and_priority() -> None:
    gen = gateway_pb2.GenerateRequest(
        model="m", messages=[{"role": "user", "content": "hi"}], request_id="client", seed=3
    )
    job = Job("abc", Owner("t", "k"), State.QUEUED, gen.SerializeToString(), "m", gateway_pb2.PRIORITY_BATCH)
    req = complete_request(job)
    assert req.request_id == request_id("abc") == "job-abc"
    assert req.priority == gateway_pb2.PRIORITY_BATCH
    assert (req.model, req.messages[0].content, req.seed) == ("m", "hi", 3)


def test_which_failures_are_retried() -> None:
    assert RunFailure(14, "down", "X").retryable  # UNAVAILABLE
    assert RunFailure(8, "busy", "X").retryable  # RESOURCE_EXHAUSTED
    assert not RunFailure(3, "bad", "X").retryable  # INVALID_ARGUMENT
    assert not RunFailure(16, "who", "X").retryable  # UNAUTHENTICATED
    assert not RunFailure(9, "done", "X").retryable  # FAILED_PRECONDITION


def test_config_names_bad_values() -> None:
    with pytest.raises(ValueError, match="TOLLWAY_JOBS_WORKERS"):
        JobsConfig(workers=0)
    with pytest.raises(ValueError, match="TOLLWAY_JOBS_HEARTBEAT_MS"):
        JobsConfig(claim_idle_ms=1000, heartbeat_ms=800)
    with pytest.raises(ValueError, match="not-a-range"):
        JobsConfig(webhook_allow_cidrs=("not-a-range",))
