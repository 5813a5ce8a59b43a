"""The two things every controller step looks up first: the driver's Controller client and
the secret its class or PV names.

Either can be missing only for now (the driver has not registered its Controller service yet,
the Secret is not written yet), so both answer ``WaitingError``: the volume shows as
``waiting`` on that thing in ``status``/``explain`` instead of failing. One place for it, so
provisioning, snapshots and attach wait with the same words.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from operation_executor.errors import WaitingError
from operation_executor.types import SecretRef

# A secret by reference -> its data (values bytes or str), or None when there is no such secret.
SecretLookup = Callable[[SecretRef], "Mapping[str, Any] | None"]


def controller_client(drivers: Any, driver: str) -> Any:
    """The Controller client of ``driver`` from the driver registry; ``WaitingError`` while the
    driver has no Controller service registered."""
    try:
        return drivers.controller_client(driver)
    except KeyError:
        raise WaitingError(f"CSI driver {driver} has no Controller service registered",
                           waiting_for=f"CSI driver {driver}") from None


def secret_data(get_secret: SecretLookup, ref: SecretRef | None) -> dict[str, str]:
    """The secret ``ref`` names as the str -> str map a CSI request carries (``{}`` for no
    reference); ``WaitingError`` while that secret does not exist."""
    if ref is None:
        return {}
    data = get_secret(ref)
    if data is None:
        raise WaitingError(f"secret {ref.namespace}/{ref.name} not found",
                           waiting_for=f"secret {ref.namespace}/{ref.name}")
    return {str(k): v.decode() if isinstance(v, bytes) else str(v) for k, v in data.items()}
