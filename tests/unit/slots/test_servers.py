"""Why a request reused less than it could have, from its lease."""

from __future__ import annotations

import pytest

from proxy.core.cause import MissCause
from proxy.slots.routing import Route
from proxy.slots.servers import Lease, miss_cause


def lease_with(known: int, source: str, held: int, restored: bool = False) -> Lease:
    lease = Lease(server=None, route=Route(0, 0, known, "x"), prompt=None, estimated=False)  # type: ignore[arg-type]
    lease.known_best, lease.known_from, lease.known_held, lease.restored = (
        known,
        source,
        held,
        restored,
    )
    return lease


@pytest.mark.parametrize(
    ("lease", "cached", "prompt", "cause"),
    [
        (lease_with(0, "none", 0), 0, 500, MissCause("cold")),
        (lease_with(19, "live", 1300), 19, 1300, MissCause("cold")),
        (lease_with(1200, "live", 1200), 1200, 1250, None),
        (lease_with(1200, "live", 1201), 1200, 1250, None),  # generated tail slack
        (lease_with(1200, "saved", 1200, restored=True), 1200, 1250, None),
        (lease_with(1200, "saved", 1200), 0, 1250, MissCause("evicted")),
        (lease_with(1200, "evicted", 1200), 19, 1250, MissCause("evicted")),
        (lease_with(700, "live", 1500), 700, 900, MissCause("diverged", token=700)),
        (lease_with(1200, "live", 1200), 800, 1250, MissCause("diverged", token=800)),
        (lease_with(1200, "live", 1200), None, 1250, None),
    ],
)
def test_miss_cause(lease: Lease, cached: int | None, prompt: int, cause: MissCause | None) -> None:
    assert miss_cause(lease, cached, prompt) == cause
