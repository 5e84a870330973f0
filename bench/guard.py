"""The gateway's guards measured: detection quality, latency, trimming, structured output.

Figures (all in-process, no servers; the local model is loaded with llama.cpp directly):

* pii: precision and recall per PII type on a labelled set built here from public examples
  (published test card numbers, the SWIFT registry's IBAN examples, libphonenumber's example
  numbers, python-stdnum's documented ids, vendors' documented fake keys) plus values made
  with the same checksums, embedded in sentences. Two halves: "tune" (used while writing
  the detectors) and "held-out" (other sentences, other generated values, other formats;
  not looked at until the detectors were done).
* injection: precision and recall of the heuristic classifier on bastioncorpus 0.6.0
  (PyPI, MIT; 118 malicious rows and 63 benign false-positive traps, 5 languages). After
  one blind run over all of it, the rows whose id hashes even were used to extend the
  signals and pick the threshold; the odd half is the held-out figure.
* latency: the input guard on 1k- and 8k-token prompts (p50 / p95), the output guard's cost
  per delta and how much it holds back, context fitting with and without trimming.
* structured: SmolLM2-135M-Instruct (llama.cpp) on 24 schemas: valid JSON and schema-valid
  answers as returned, after the lenient parse, and after up to 2 retries with feedback.

    .venv/bin/python bench/guard.py [--only pii,injection,latency,output,context,structured]
                                    [--runs 200] [--no-model]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import phonenumbers
from stdnum import iban as stdnum_iban
from stdnum import luhn, verhoeff
from stdnum.br import cpf
from stdnum.es import dni, nie
from stdnum.fr import nir
from stdnum.it import codicefiscale

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tollway.common.chat import ChatMessage, ChatRequest, ResponseFormat  # noqa: E402
from tollway.common.tokens import count_tokens  # noqa: E402
from tollway.gateway.guard.context import MemorySummaryCache, fit_context  # noqa: E402
from tollway.gateway.guard.injection import HeuristicClassifier  # noqa: E402
from tollway.gateway.guard.inputs import InputGuard  # noqa: E402
from tollway.gateway.guard.output import OutputGuard  # noqa: E402
from tollway.gateway.guard.pii import PiiType, Scanner  # noqa: E402
from tollway.gateway.guard.policy import GuardPolicy  # noqa: E402
from tollway.gateway.guard.structured import (  # noqa: E402
    StructuredOutputInvalid,
    compile_format,
    generate_structured,
    lenient_parse,
)

# --- the labelled PII set --------------------------------------------------------------------------

# Published test card numbers (payment processors' developer documentation).
CARDS_PUBLISHED = [
    "4111111111111111", "4242424242424242", "4012888888881881", "4000056655665556", "4222222222222",
    "5555555555554444", "5105105105105100", "2223003122003222", "5200828282828210", "5454545454545454",
    "378282246310005", "371449635398431", "378734493671000", "6011111111111117", "6011000990139424",
    "3530111333300000", "3566002020360505", "30569309025904", "38520000023237", "6200000000000005",
]  # fmt: skip
# The SWIFT IBAN registry's example per country.
IBANS_PUBLISHED = [
    "DE89370400440532013000",
    "GB29NWBK60161331926819",
    "FR1420041010050500013M02606",
    "ES9121000418450200051332",
    "IT60X0542811101000000123456",
    "NL91ABNA0417164300",
    "BE68539007547034",
    "CH9300762011623852957",
    "AT611904300234573201",
    "PL61109010140000071219812874",
    "SE4550000000058398257466",
    "NO9386011117947",
    "DK5000400440116243",
    "FI2112345600000785",
    "IE29AIBK93115212345678",
    "PT50000201231234567890154",
    "LU280019400644750000",
    "GR1601101250000000012300695",
    "SA0380000000608010167519",
    "MT84MALT011000012345MTLCAST001S",
]
# python-stdnum's documented examples.
IDS_PUBLISHED = [
    ("536-90-4399", "us_ssn"),
    ("54362315K", "es_dni"),
    ("X2482300W", "es_nie"),
    ("RCCMNL83S18D969H", "it_codice_fiscale"),
    ("2 95 10 99 126 111 93", "fr_nir"),
    ("390.533.447-05", "br_cpf"),
    ("2341 2341 2346", "in_aadhaar"),
]
# Vendors' documented example keys.
SECRETS_PUBLISHED = [
    "AKIAIOSFODNN7EXAMPLE",
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ"
    ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c",
]
PHONE_REGIONS_INTL = ["US", "GB", "DE", "FR", "IN", "JP", "BR", "AU", "ES", "IT", "NL", "CA", "MX", "SE", "PL"]

# Look-alikes that must not be flagged (type None).
NEGATIVES = [
    "released on 2024-03-15", "due 15/03/2024", "at 14:30:00", "Python 3.11.7", "host 192.168.10.20",
    "costs $1,299.00", "zip 94103", "ISBN 978-3-16-148410-0", "order #4521987", "years 1999-2004",
    "at 37.7749, -122.4194", "growth of 12.5%", "invoice 2024-000123", "build 20240315.4", "port 8080",
    "uuid 123e4567-e89b-12d3-a456-426614174000", "commit 9fceb02d0ae598e95dc970b74767f19372d61af8",
    "@channel please review", "user@localhost", "name at example dot com", "@app.route('/')", "foo@bar",
    "the sk-learn package", "a task-based plan", "ghost_writer module", "tokens=4096", "password reset link",
    "pages 1234-5678", "call extension 204", "ratio 3/4", "version 10.0.19045.3803", "serial AB-1234-CD",
    "tracking 1Z999AA10123456784", "EAN 4006381333931", "page 4111 of the book",
]  # fmt: skip

TUNE_TEMPLATES = [
    "Please contact me at {x}.",
    "My details: {x}, thanks.",
    "{x}",
    "Details: {x} (see attached)",
    "Hi team,\nthe value is {x}\nBest",
]
HELDOUT_TEMPLATES = [
    "Could you update the record with {x} before Friday?",
    "Ref: {x}; do not share.",
    "— {x} —",
    "I wrote down {x} on the form but it bounced",
    "{x}, as discussed yesterday.",
    'The customer said "{x}" twice.',
]


def _group4(s: str, sep: str = " ") -> str:
    return sep.join(s[i : i + 4] for i in range(0, len(s), 4))


def _card(rng: random.Random) -> str:
    prefix, length = rng.choice([("4", 16), ("51", 16), ("55", 16), ("2221", 16), ("34", 15), ("37", 15), ("6011", 16)])
    body = prefix + "".join(rng.choice("0123456789") for _ in range(length - len(prefix) - 1))
    return body + luhn.calc_check_digit(body)


def _iban(rng: random.Random) -> str:
    # Some countries' BBANs carry national check digits too (BE, ES, NO, ...): a random BBAN
    # there is not a real account number, so draw until python-stdnum's full check accepts it.
    while True:
        example = rng.choice(IBANS_PUBLISHED)
        bban = "".join(rng.choice("0123456789") if c.isdigit() else c for c in example[4:])
        number = example[:2] + stdnum_iban.calc_check_digits(example[:2] + "00" + bban) + bban
        if stdnum_iban.is_valid(number):
            return number


def _phone(rng: random.Random, region: str, national: bool) -> str:
    for _ in range(20):
        kind = rng.choice([phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE])
        ex = phonenumbers.example_number_for_type(region, kind)
        if ex is None:
            continue
        nsn = str(ex.national_number)
        number = phonenumbers.PhoneNumber(
            country_code=ex.country_code, national_number=int(nsn[:-2] + f"{rng.randrange(100):02d}")
        )
        if phonenumbers.is_valid_number(number):
            fmt = (
                phonenumbers.PhoneNumberFormat.NATIONAL
                if national
                else rng.choice([phonenumbers.PhoneNumberFormat.INTERNATIONAL, phonenumbers.PhoneNumberFormat.E164])
            )
            return phonenumbers.format_number(number, fmt)
    raise RuntimeError(region)


def _national_id(rng: random.Random) -> tuple[str, str]:
    kind = rng.choice(["us_ssn", "es_dni", "es_nie", "fr_nir", "br_cpf", "in_aadhaar", "it_codice_fiscale", "gb_nino"])
    d = lambda n: "".join(rng.choice("0123456789") for _ in range(n))  # noqa: E731
    if kind == "us_ssn":
        return f"{rng.randint(1, 665):03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}", kind
    if kind == "es_dni":
        n = d(8)
        return n + dni.calc_check_digit(n), kind
    if kind == "es_nie":
        n = rng.choice("XYZ") + d(7)
        return n + nie.calc_check_digit(n), kind
    if kind == "fr_nir":
        n = rng.choice("12") + d(2) + f"{rng.randint(1, 12):02d}" + f"{rng.randint(1, 95):02d}" + d(6)
        full = n + nir.calc_check_digits(n)
        return (" ".join([full[0], full[1:3], full[3:5], full[5:7], full[7:10], full[10:13], full[13:]]), kind)
    if kind == "br_cpf":
        n = d(9)
        full = n + cpf._calc_check_digits(n)
        return f"{full[:3]}.{full[3:6]}.{full[6:9]}-{full[9:]}", kind
    if kind == "in_aadhaar":
        n = rng.choice("23456789") + d(10)
        full = n + verhoeff.calc_check_digit(n)
        return _group4(full), kind
    if kind == "it_codice_fiscale":
        letters = "BCDFGHLMNPRSTVZ"
        name = "".join(rng.choice(letters) for _ in range(6))
        n = name + d(2) + rng.choice("ABCDEHLMPRST") + f"{rng.randint(1, 28):02d}" + rng.choice("ABCDEFGHILM") + d(3)
        return n + codicefiscale.calc_check_digit(n), kind
    first = rng.choice("ABCEHJKLMPRSTWXYZ")
    second = rng.choice("ABCEGHJKLMNPRSTWXYZ")
    return f"{first}{second} {d(2)} {d(2)} {d(2)} {rng.choice('ABCD')}", kind


def _secret(rng: random.Random) -> str:
    alnum = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    r = lambda n, a=alnum: "".join(rng.choice(a) for _ in range(n))  # noqa: E731
    return rng.choice(
        [
            lambda: "sk-proj-" + r(48),
            lambda: "sk-ant-api03-" + r(40),
            lambda: "AKIA" + r(16, "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"),
            lambda: "ghp_" + r(36),
            lambda: "xoxb-" + r(12, "0123456789") + "-" + r(24),
            lambda: "AIza" + r(35),
            lambda: "sk_live_" + r(24),
            lambda: "glpat-" + r(20),
            lambda: "tw-" + r(43),
            lambda: "api_key=" + r(32),
        ]
    )()


def _email(rng: random.Random) -> str:
    local = rng.choice(["jane.doe", "j.smith+news", "ops_team", "Mary-Ann.O", "x1", "sales.eu"])
    domain = rng.choice(["example.com", "example.org", "mail.example.net", "example.co.uk", "sub.example.io"])
    return f"{local}@{domain}"


@dataclasses.dataclass
class Sample:
    text: str
    labels: list[tuple[str, int, int]]  # (type, start, end)


def pii_set(half: str, per_type: int = 60) -> list[Sample]:
    """The labelled sentences of one half ("tune" or "heldout")."""
    held = half == "heldout"
    rng = random.Random(2 if held else 1)
    templates = HELDOUT_TEMPLATES if held else TUNE_TEMPLATES
    items: list[tuple[str, str]] = []
    # Published examples: alternate ones to each half, so none is in both.
    pick = 1 if held else 0
    items += [(c if i % 3 else _group4(c), "card") for i, c in enumerate(CARDS_PUBLISHED) if i % 2 == pick]
    items += [(x if i % 2 else _group4(x), "iban") for i, x in enumerate(IBANS_PUBLISHED) if i % 2 == pick]
    items += [(x, "national_id") for i, (x, _) in enumerate(IDS_PUBLISHED) if i % 2 == pick]
    items += [(x, "secret") for i, x in enumerate(SECRETS_PUBLISHED) if i % 2 == pick]
    for _ in range(per_type):
        c = _card(rng)
        items.append((rng.choice([c, _group4(c), _group4(c, "-")]), "card"))
        b = _iban(rng)
        items.append((b if rng.random() < 0.5 else _group4(b), "iban"))
        region = rng.choice(PHONE_REGIONS_INTL)
        items.append((_phone(rng, region, national=region in ("US", "GB") and rng.random() < 0.5), "phone"))
        items.append((_national_id(rng)[0], "national_id"))
        items.append((_secret(rng), "secret"))
        items.append((_email(rng), "email"))
    negatives = [n for i, n in enumerate(NEGATIVES) if i % 2 == pick]
    # Cards and IBANs with a wrong check digit are look-alikes too.
    for _ in range(per_type // 3):
        c = _card(rng)
        negatives.append(c[:-1] + str((int(c[-1]) + 1) % 10))
        b = _iban(rng)
        negatives.append(b[:2] + f"{(int(b[2:4]) + 1) % 100:02d}" + b[4:])
    samples: list[Sample] = []
    for value, kind in items:
        template = rng.choice(templates)
        start = template.index("{x}")
        samples.append(Sample(template.replace("{x}", value), [(kind, start, start + len(value))]))
    for value in negatives:
        samples.append(Sample(rng.choice(templates).replace("{x}", value), []))
    return samples


def evaluate_pii(samples: list[Sample], scanner: Scanner) -> dict[str, tuple[int, int, int]]:
    """(true positives, false positives, false negatives) per type."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for s in samples:
        findings = scanner.scan(s.text)
        matched: set[int] = set()
        for f in findings:
            hit = next(
                (i for i, (t, a, b) in enumerate(s.labels) if t == f.type.value and f.start < b and a < f.end), None
            )
            if hit is None:
                counts[f.type.value][1] += 1
            else:
                counts[f.type.value][0] += 1
                matched.add(hit)
        for i, (t, _, _) in enumerate(s.labels):
            if i not in matched:
                counts[t][2] += 1
    return {k: (v[0], v[1], v[2]) for k, v in counts.items()}


def _pr(tp: int, fp: int, fn: int) -> tuple[float, float]:
    return (tp / (tp + fp) if tp + fp else 1.0, tp / (tp + fn) if tp + fn else 1.0)


def bench_pii() -> None:
    scanner = Scanner()
    print("\n## PII detection (labelled set built from public examples; see the module docstring)")
    for half in ("tune", "heldout"):
        samples = pii_set(half)
        positives = sum(len(s.labels) for s in samples)
        print(f"\n{half}: {len(samples)} sentences, {positives} items, {len(samples) - positives} look-alikes")
        print("| type | items | TP | FP | FN | precision | recall |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        result = evaluate_pii(samples, scanner)
        for t in PiiType:
            tp, fp, fn = result.get(t.value, (0, 0, 0))
            p, r = _pr(tp, fp, fn)
            print(f"| {t.value} | {tp + fn} | {tp} | {fp} | {fn} | {p:.3f} | {r:.3f} |")


def bench_injection(threshold: float = 0.6) -> None:
    import hashlib

    from bastioncorpus import __version__ as corpus_version
    from bastioncorpus import load_corpus

    rows = load_corpus()
    classifier = HeuristicClassifier()
    by: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])  # tp fp fn tn
    scores: dict[str, list[tuple[float, bool]]] = defaultdict(list)
    for row in rows:
        # The tuning half: rows whose id hashes even (looked at while writing the signals).
        half = "tune" if int(hashlib.sha256(row.id.encode()).hexdigest(), 16) % 2 == 0 else "held-out"
        role = "tool" if row.channel == "tool_output" else "user"
        score = classifier.classify(row.stripped(), role).score
        flagged = score >= threshold
        malicious = row.label == "malicious"
        scores[half].append((score, malicious))
        for key in (half, f"{half} lang={row.lang}", f"{half} channel={row.channel}"):
            c = by[key]
            c[0 if malicious and flagged else 1 if flagged else 2 if malicious else 3] += 1
    print(f"\n## Prompt injection: heuristic classifier on bastioncorpus {corpus_version} (threshold {threshold})")
    print("| slice | malicious | benign | TP | FP | FN | precision | recall |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for key in sorted(by, key=lambda k: (not k.startswith("held"), " " in k, k)):
        tp, fp, fn, tn = by[key]
        p, r = _pr(tp, fp, fn)
        print(f"| {key} | {tp + fn} | {fp + tn} | {tp} | {fp} | {fn} | {p:.3f} | {r:.3f} |")
    print("\nheld-out half at other thresholds (precision / recall):", end="")
    for th in (0.5, 0.6, 0.75, 0.9):
        tp = sum(1 for s, m in scores["held-out"] if m and s >= th)
        fp = sum(1 for s, m in scores["held-out"] if not m and s >= th)
        fn = sum(1 for s, m in scores["held-out"] if m and s < th)
        p, r = _pr(tp, fp, fn)
        print(f" {th}: {p:.2f} / {r:.2f};", end="")
    print()


# --- latency ---------------------------------------------------------------------------------------


def _prose(tokens: int) -> str:
    """Repository prose (docs with tables and numbers) with a few PII items, cut to ``tokens``."""
    base = (ROOT / "docs" / "architecture.md").read_text() + (ROOT / "README.md").read_text()
    extras = " Contact jane.doe@example.com or +44 20 7946 0958; IBAN GB29 NWBK 6016 1331 9268 19. "
    text = ""
    while count_tokens(text) < tokens:
        text += base + extras
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi) // 2
        if count_tokens(text[:mid]) < tokens:
            lo = mid + 1
        else:
            hi = mid
    return text[:lo]


def _timed(fn: Callable[[], Any], runs: int) -> tuple[float, float]:
    for _ in range(5):
        fn()
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.95) - 1]


def bench_latency(runs: int) -> None:
    guard = InputGuard()
    policy = GuardPolicy()
    classifier = HeuristicClassifier()
    print("\n## Input guard latency (default policy: PII redact/reject, injection, limits)")
    print("CPU is the calling thread's CPU time (what the guard costs); wall includes waiting for a core.")
    print("| prompt | characters | whole guard CPU p50 / p95 ms | wall p50 / p95 ms | PII scan CPU | injection CPU |")
    print("|---|---:|---:|---:|---:|---:|")
    for n in (1000, 8000):
        text = _prose(n)
        messages = [ChatMessage("system", "You are helpful."), ChatMessage("user", text)]
        # Interleaved, so that the machine's load (shared, 2 cores) weighs on the three alike.
        cpu: dict[str, list[float]] = {"whole": [], "scan": [], "injection": []}
        wall: list[float] = []
        calls = {
            "whole": lambda: guard.check(messages, policy),  # noqa: B023
            "scan": lambda: policy.scanner.scan(text),  # noqa: B023
            "injection": lambda: classifier.classify(text),  # noqa: B023
        }
        for i in range(runs + 5):
            for name, call in calls.items():
                c, w = time.thread_time(), time.perf_counter()
                call()
                if i >= 5:
                    cpu[name].append((time.thread_time() - c) * 1000)
                    if name == "whole":
                        wall.append((time.perf_counter() - w) * 1000)
        whole, wall = sorted(cpu["whole"]), sorted(wall)
        p95 = int(len(whole) * 0.95) - 1
        print(
            f"| {n} tokens | {len(text)} | {statistics.median(whole):.2f} / {whole[p95]:.2f} | "
            f"{statistics.median(wall):.2f} / {wall[p95]:.2f} | "
            f"{statistics.median(cpu['scan']):.2f} | {statistics.median(cpu['injection']):.2f} |"
        )


def bench_output(runs: int) -> None:
    policy = GuardPolicy()
    answer = _prose(2000)
    deltas = [answer[i : i + 4] for i in range(0, len(answer), 4)]  # about a token each
    print("\n## Output guard on a stream (2,000-token answer in 4-character deltas)")
    per_delta: list[float] = []
    held_max = 0
    held_sum = 0
    first_release: list[int] = []
    for _ in range(max(3, runs // 40)):
        guard = OutputGuard(policy)
        first = -1
        for i, d in enumerate(deltas):
            t = time.thread_time()
            out = guard.feed(d)
            per_delta.append((time.thread_time() - t) * 1e6)
            if out and first < 0:
                first = i
            held_max = max(held_max, guard.held)
            held_sum += guard.held
        guard.flush()
        first_release.append(first)
    per_delta.sort()
    mean_held = held_sum / (len(deltas) * len(first_release))
    print(f"- deltas: {len(deltas)}; added CPU time per delta: mean {statistics.fmean(per_delta):.1f} µs, "
          f"p50 {statistics.median(per_delta):.1f} µs, p99 {per_delta[int(len(per_delta) * 0.99)]:.1f} µs")  # fmt: skip
    print(
        f"- held back: mean {mean_held:.1f} characters, max {held_max} "
        f"(look-behind cap {policy.output.lookbehind_chars})"
    )
    print(f"- first text released with delta #{first_release[0]} (0-based): the first token waits for the next one")


def _long_conversation(turns: int, words: int = 45) -> ChatRequest:
    rng = random.Random(turns)
    vocab = [
        "invoice",
        "payment",
        "refund",
        "account",
        "order",
        "delivery",
        "contract",
        "customer",
        "ticket",
        "status",
        "update",
    ]
    messages = [ChatMessage("system", "You are the billing team's assistant. Be concise and cite invoice numbers.")]
    for i in range(turns):
        role = "user" if i % 2 == 0 else "assistant"
        messages.append(ChatMessage(role, " ".join(rng.choice(vocab) for _ in range(words)) + f" (turn {i})"))
    return ChatRequest("m", tuple(messages), max_tokens=512)


def bench_context(runs: int) -> None:
    async def summariser(messages: tuple[ChatMessage, ...], max_tokens: int) -> str:
        return "The customer asked about invoices 1-40; refunds were approved for two orders. " * 4

    print("\n## Context-window fitting (window 8,192, max_tokens 512, a 60-token summary stub)")
    print("| conversation | prompt tokens | after | saved | removed turns | fit ms (cold) | fit ms (cached summary) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for turns in (20, 200, 1000):
        request = _long_conversation(turns)
        cache = MemorySummaryCache()
        t = time.perf_counter()
        fit = asyncio.run(fit_context(request, 8192, summariser=summariser, cache=cache))
        cold = (time.perf_counter() - t) * 1000
        warm = _timed(lambda: asyncio.run(fit_context(request, 8192, summariser=summariser, cache=cache)), 20)  # noqa: B023
        r = fit.report
        print(
            f"| {turns} turns | {r.input_tokens_before} | {r.input_tokens_after} | {r.tokens_saved} | "
            f"{r.removed_messages} | {cold:.1f} | {warm[0]:.1f} |"
        )


# --- structured output with the local model ---------------------------------------------------------------

S: dict[str, Any] = {"type": "string"}
INT: dict[str, Any] = {"type": "integer"}
NUM: dict[str, Any] = {"type": "number"}
BOOL: dict[str, Any] = {"type": "boolean"}


def obj(**props: Any) -> dict[str, Any]:
    """An object schema whose every property is required."""
    return {"type": "object", "properties": props, "required": list(props)}


def arr(items: dict[str, Any], **limits: Any) -> dict[str, Any]:
    return {"type": "array", "items": items, **limits}


def between(low: float, high: float, typ: str = "integer") -> dict[str, Any]:
    return {"type": typ, "minimum": low, "maximum": high}


def one_of(*values: str) -> dict[str, Any]:
    return {"enum": list(values)}


SCHEMAS: list[tuple[str, dict[str, Any]]] = [
    ("Give the name and age of a fictional person.", obj(name=S, age=INT)),
    ("Name a city and its country.", obj(city=S, country=S)),
    ("List three colours.", obj(colours=arr(S, minItems=3))),
    ("Is water wet? Answer yes or no with a reason.", obj(answer=BOOL, reason=S)),
    ("Give a book title and its author.", obj(title=S, author=S)),
    ("Classify the sentiment of 'I love this phone'.", obj(sentiment=one_of("positive", "negative", "neutral"))),
    ("Give the temperature in Celsius of boiling water.", obj(celsius=NUM)),
    ("Describe a product with a name and a price in dollars.", obj(name=S, price={"type": "number", "minimum": 0})),
    ("Give two animals and the sound each makes.", obj(animals=arr(obj(animal=S, sound=S), minItems=2))),
    ("Give a date as year, month and day.", obj(year=INT, month=between(1, 12), day=between(1, 31))),
    ("Summarise 'The cat sat on the mat' in one short sentence.", obj(summary=S)),
    ("Translate 'hello' to French.", obj(source=S, translation=S)),
    ("Extract the e-mail from: 'write to ann@example.com'.", obj(email=S)),
    ("Give a recipe name and a list of ingredients.", obj(recipe=S, ingredients=arr(S))),
    ("Rate a movie from 1 to 5.", obj(movie=S, rating=between(1, 5))),
    ("Give the capital of Japan.", obj(capital=S)),
    ("Name a planet and whether it has rings.", obj(planet=S, has_rings=BOOL)),
    ("Give a user with a username and a list of roles.", obj(username=S, roles=arr(S))),
    ("Give the result of 2 + 3.", obj(result=INT)),
    ("Describe the weather with a condition and temperature.", obj(condition=S, temperature=NUM)),
    ("Give an address with street, city and postcode.", obj(street=S, city=S, postcode=S)),
    ("List two programming languages with the year each appeared.", obj(languages=arr(obj(name=S, year=INT)))),
    (
        "Give a task with a title, a priority (low, medium or high) and done false.",
        obj(title=S, priority=one_of("low", "medium", "high"), done=BOOL),
    ),
    (
        "Give a colour as red, green and blue values from 0 to 255.",
        obj(r=between(0, 255), g=between(0, 255), b=between(0, 255)),
    ),
]


def bench_structured(max_schemas: int, max_tokens: int) -> None:
    from llama_cpp import Llama

    from tollway.launcher.stack import gguf_path

    llm = Llama(model_path=str(gguf_path()), n_ctx=2048, n_threads=2, verbose=False, seed=7)

    def complete(messages: tuple[ChatMessage, ...], schema: dict[str, Any] | None = None) -> str:
        extra: dict[str, Any] = {}
        if schema is not None:  # llama.cpp enforces the schema with a grammar, as a provider would
            extra["response_format"] = {"type": "json_object", "schema": schema}
        out = llm.create_chat_completion(
            messages=[{"role": m.role, "content": m.content} for m in messages],
            max_tokens=max_tokens,
            temperature=0.2,
            **extra,
        )
        return out["choices"][0]["message"]["content"] or ""

    async def call(messages: tuple[ChatMessage, ...]) -> str:
        return complete(messages)

    schemas = SCHEMAS[:max_schemas]
    counts: dict[str, int] = defaultdict(int)
    attempts_total = 0
    t0 = time.perf_counter()
    print(f"\n## Structured output: SmolLM2-135M-Instruct Q4_1 (llama.cpp, T 0.2, max_tokens {max_tokens})")
    for prompt, schema in schemas:
        compiled = compile_format(ResponseFormat("json_schema", schema=schema))
        assert compiled is not None
        system = "Answer with a single JSON value and nothing else. It must match this JSON Schema:\n" + json.dumps(
            schema
        )
        messages = (ChatMessage("system", system), ChatMessage("user", prompt))
        first = complete(messages)
        flags = []
        try:
            strict = json.loads(first)
            counts["raw_json"] += 1
            counts["raw_valid"] += not compiled.errors(strict)
            flags.append("raw-json" + ("+valid" if not compiled.errors(strict) else ""))
        except ValueError:
            pass
        parsed = lenient_parse(first)
        if parsed.ok:
            counts["lenient_json"] += 1
            counts["lenient_valid"] += not compiled.errors(parsed.value)
            flags.append("lenient-json" + ("+valid" if not compiled.errors(parsed.value) else ""))
        answers = iter([first])

        async def attempt(turns: tuple[ChatMessage, ...]) -> str:
            nxt = next(answers, None)  # noqa: B023
            return nxt if nxt is not None else await call(turns)

        try:
            result = asyncio.run(generate_structured(attempt, messages, compiled))
            counts["final_valid"] += 1
            attempts_total += result.attempts
            outcome = f"valid after {result.attempts} call(s){' (repaired)' if result.repaired else ''}"
        except StructuredOutputInvalid as exc:
            attempts_total += exc.attempts
            outcome = f"invalid after {exc.attempts} calls"
        enforced = lenient_parse(complete(messages, schema))
        enforced_valid = enforced.ok and not compiled.errors(enforced.value)
        counts["enforced_json"] += enforced.ok
        counts["enforced_valid"] += enforced_valid
        print(
            f"  {prompt[:46]:46s} first: {','.join(flags) or 'no JSON'}; loop: {outcome}; "
            f"enforced: {'valid' if enforced_valid else 'JSON, invalid' if enforced.ok else 'no JSON'}",
            flush=True,
        )
    n = len(schemas)
    elapsed = time.perf_counter() - t0
    print("| stage | valid JSON | schema-valid |")
    print("|---|---:|---:|")
    print(f"| as returned (json.loads) | {counts['raw_json']}/{n} | {counts['raw_valid']}/{n} |")
    print(
        f"| lenient parse (fences, extraction, json-repair) | {counts['lenient_json']}/{n} "
        f"| {counts['lenient_valid']}/{n} |"
    )
    print(f"| + up to 2 retries with the errors fed back | — | {counts['final_valid']}/{n} |")
    print(
        f"| provider-enforced (llama.cpp grammar from the schema), one call | {counts['enforced_json']}/{n} "
        f"| {counts['enforced_valid']}/{n} |"
    )
    print(f"- model calls in the loop: {attempts_total} for {n} requests; {elapsed:.0f} s in all")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="pii,injection,latency,output,context,structured")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--no-model", action="store_true", help="skip the structured-output run")
    parser.add_argument("--schemas", type=int, default=len(SCHEMAS), help="structured: the first N schemas")
    parser.add_argument("--max-tokens", type=int, default=96, help="structured: the answer's token limit")
    args = parser.parse_args()
    parts = set(args.only.split(","))
    load = os.getloadavg()
    cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo"], capture_output=True, text=True)
    print(f"# bench/guard.py — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"Python {platform.python_version()}, {os.cpu_count()} cores, {cpu.stdout.split(':')[-1].strip()}; "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")  # fmt: skip
    if "pii" in parts:
        bench_pii()
    if "injection" in parts:
        bench_injection()
    if "latency" in parts:
        bench_latency(args.runs)
    if "output" in parts:
        bench_output(args.runs)
    if "context" in parts:
        bench_context(args.runs)
    if "structured" in parts and not args.no_model:
        bench_structured(args.schemas, args.max_tokens)
    load = os.getloadavg()
    print(f"\nload average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
