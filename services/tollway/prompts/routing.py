"""Which version a request gets: the version it names, else its tenant's pin, else its
variant of the label's A/B split, else the label's version.

A/B assignment is sticky by construction: a caller's point in [0, 1) is a hash of the
template and the caller (the user, or the tenant when no user is named), and the arms take
consecutive slices of that interval in the order they are listed. The same caller always
lands on the same arm while the weights stay; moving weight from the last arm to the first
moves only the callers in the slice that changed hands. The label is not part of the hash,
so a caller in the first 10 % of ``staging`` is in the first 10 % of ``production`` too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

from tollway.mesh.frozen import frozen
from tollway.prompts.types import Label, Resolution, Variant


@frozen
class Choice:
    """A routing decision: the version, why, and with a variant its index among the arms."""

    version: int
    resolution: Resolution
    variant_index: int = 0


def point(template_id: str, subject: str) -> float:
    """The caller's fixed point in [0, 1) for ``template_id`` (uniform over subjects)."""
    digest = hashlib.sha256(f"{template_id}\x00{subject}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def pick_variant(variants: Sequence[Variant], template_id: str, subject: str) -> int:
    """The index of the arm ``subject`` gets.

    Raises:
        ValueError: No arm has a positive weight (SetVariants refuses such a split).
    """
    total = sum(v.weight for v in variants)
    if total <= 0:
        raise ValueError("no variant has a positive weight")
    target = point(template_id, subject) * total
    edge = 0
    for i, v in enumerate(variants):
        edge += v.weight
        if target < edge:
            return i
    return max(i for i, v in enumerate(variants) if v.weight > 0)  # float rounding at the very top


def choose(
    template_id: str,
    label: Label,
    *,
    pins: Mapping[str, int],
    tenant: str,
    user: str,
) -> Choice:
    """Chooses the version for a request that follows ``label``.

    Args:
        template_id: The template.
        label: The label followed, with its split.
        pins: The template's tenant pins (only ``tenant``'s matters).
        tenant: The caller's tenant ("" if unknown).
        user: The caller's end user ("" if unknown).

    A request naming neither tenant nor user has nobody to stick to: it gets the label's
    own version rather than a random arm.
    """
    if tenant and tenant in pins:
        return Choice(pins[tenant], Resolution.TENANT_PIN)
    subject = f"u:{user}" if user else (f"t:{tenant}" if tenant else "")
    if label.variants and subject:
        i = pick_variant(label.variants, template_id, subject)
        return Choice(label.variants[i].version, Resolution.VARIANT, i)
    return Choice(label.version, Resolution.LABEL)
