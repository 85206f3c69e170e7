"""KPI folding (event -> bucket) and reading (buckets -> values), compiled from the config.

A bucket is the state of one scope (user or team partial) in one period:
``{"p": partition, "o": highest applied source offset, "n": {kpi: number},
"s": {kpi: [distinct values]}}``. Ratios are not stored; they are computed on read, so
they stay right when their parts are summed over periods and partitions.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from app.config import PulseConfig


@dataclass(frozen=True)
class _Step:
    kpi: str
    kind: str  # count | sum | distinct
    field: str | None
    actions: frozenset[str]


@dataclass(frozen=True)
class _Plan:
    """The steps of one event type and action, by kind: what :meth:`KpiFolder.apply` does."""

    counts: tuple[str, ...]
    sums: tuple[tuple[str, str], ...]  # (kpi, event field)
    distincts: tuple[tuple[str, str], ...]
    contributes: bool  # some KPI counts this action


class KpiFolder:
    """Applies events to buckets according to the configured KPIs."""

    def __init__(self, config: PulseConfig) -> None:
        self._by_type: dict[str, list[_Step]] = {}
        self._any_type: list[_Step] = []
        self._plans: dict[tuple[str, str], _Plan] = {}
        self.names = tuple(config.kpis)
        self.ratios = {n: k.ratio for n, k in config.kpis.items() if k.ratio is not None}
        self.distinct = frozenset(n for n, k in config.kpis.items() if k.distinct is not None)
        for name, kpi in config.kpis.items():
            if kpi.ratio is not None:
                continue
            step = _Step(name, kpi.kind, kpi.sum or kpi.distinct, frozenset(kpi.actions))
            if kpi.source_types is None:
                self._any_type.append(step)
            else:
                for event_type in kpi.source_types:
                    self._by_type.setdefault(event_type, []).append(step)

    @property
    def value_fields(self) -> frozenset[str]:
        """The event fields some sum or distinct KPI reads."""
        steps = [*self._any_type, *(s for group in self._by_type.values() for s in group)]
        return frozenset(step.field for step in steps if step.field)

    @property
    def types(self) -> frozenset[str]:
        """The event types some KPI counts by name."""
        return frozenset(self._by_type)

    def steps_for(self, event_type: str) -> list[_Step]:
        steps = self._by_type.get(event_type)
        if not self._any_type:
            return steps or []
        return [*(steps or ()), *self._any_type]

    def plan(self, event_type: str, action: str) -> _Plan:
        """What an event of this type and action changes (remembered per pair)."""
        plan = self._plans.get((event_type, action))
        if plan is None:
            steps = [step for step in self.steps_for(event_type) if action in step.actions]
            plan = _Plan(
                counts=tuple(step.kpi for step in steps if step.kind == "count"),
                sums=tuple((step.kpi, step.field) for step in steps
                           if step.kind == "sum" and step.field),
                distincts=tuple((step.kpi, step.field) for step in steps
                                if step.kind == "distinct" and step.field),
                contributes=bool(steps))
            if len(self._plans) > 10_000:
                self._plans.clear()
            self._plans[event_type, action] = plan
        return plan

    @staticmethod
    def apply(bucket: dict[str, Any], plan: _Plan, event: dict[str, Any]) -> None:
        """Fold one event into ``bucket`` in place (``plan``: of its type and action)."""
        numbers = bucket["n"]
        for kpi in plan.counts:
            numbers[kpi] = numbers.get(kpi, 0) + 1
        for kpi, name in plan.sums:
            value = event.get(name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                numbers[kpi] = numbers.get(kpi, 0) + value
        for kpi, name in plan.distincts:
            value = event.get(name)
            if isinstance(value, (str, int, float)):
                values = bucket["s"].setdefault(kpi, [])
                if value not in values:
                    values.append(value)

    @staticmethod
    def correct(bucket: dict[str, Any], plan: _Plan, count: int,
                sums: dict[str, float]) -> None:
        """Fold a ledger correction in place: ``count`` into counts, ``sums`` (signed
        differences by field) into sums; distinct values are not corrected."""
        numbers = bucket["n"]
        changes = [(kpi, count) for kpi in plan.counts]
        changes += [(kpi, sums.get(name, 0)) for kpi, name in plan.sums]
        for kpi, change in changes:
            if change:
                numbers[kpi] = numbers.get(kpi, 0) + change

    def read(self, buckets: Iterable[dict[str, Any] | None]) -> dict[str, float]:
        """KPI values of the union of ``buckets`` (periods and/or partitions)."""
        totals: dict[str, float] = dict.fromkeys(self.names, 0)
        distinct: dict[str, set[Any]] = {name: set() for name in self.distinct}
        for bucket in buckets:
            if not bucket:
                continue
            for name, number in bucket["n"].items():
                if name in totals:
                    totals[name] += number
            for name, values in bucket["s"].items():
                if name in distinct:
                    distinct[name].update(values)
        for name, values in distinct.items():
            totals[name] = len(values)
        for name, (numerator, denominator) in self.ratios.items():
            below = totals[denominator]
            totals[name] = round(totals[numerator] / below, 6) if below else 0
        return totals


def new_bucket(partition: int, offset: int) -> dict[str, Any]:
    return {"p": partition, "o": offset, "n": {}, "s": {}}
