"""Fault injection for chaos tests: named failure points and poison messages.

Production code calls ``fault_point(name)`` at the places where a crash is
most dangerous (between a commit and its acknowledgement, say) and
``check_poison(key)`` before it applies a message. Both do nothing unless a
``FaultPlan`` is active in the calling task's context, which only tests and
``tradepulse chaos`` set.
"""

from __future__ import annotations

import collections
import contextvars
from collections.abc import Iterable


class InjectedFault(Exception):
    """A failure raised on purpose by an active ``FaultPlan``."""


class FaultPlan:
    """A fault schedule: the failing hits of each point and the poison message keys."""

    def __init__(
        self, failures: dict[str, Iterable[int]] | None = None, poison: Iterable[str] = ()
    ) -> None:
        # Point name -> the 1-based hit numbers at which that point raises.
        self.failures = {name: set(hits) for name, hits in (failures or {}).items()}
        self.poison = set(poison)
        self.hits: collections.Counter[str] = collections.Counter()
        self.raised: collections.Counter[str] = collections.Counter()

    def hit(self, name: str) -> None:
        self.hits[name] += 1
        if self.hits[name] in self.failures.get(name, ()):
            self.raised[name] += 1
            raise InjectedFault(f"injected fault at {name} (hit {self.hits[name]})")


active_plan: contextvars.ContextVar[FaultPlan | None] = contextvars.ContextVar(
    "tradepulse_fault_plan", default=None
)


def fault_point(name: str) -> None:
    """Raise ``InjectedFault`` if the active plan marks this hit as failing."""
    plan = active_plan.get()
    if plan is not None:
        plan.hit(name)


def check_poison(key: str) -> None:
    """Raise ``InjectedFault`` if the active plan marks ``key`` as poison."""
    plan = active_plan.get()
    if plan is not None and key in plan.poison:
        plan.raised["poison"] += 1
        raise InjectedFault(f"poison message {key}")
