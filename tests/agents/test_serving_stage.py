"""The serving layer stages only what a batch may have changed (``changed``)."""

from __future__ import annotations

from app.serving import ServingLayer
from app.settings import Settings


def _layer() -> ServingLayer:
    return ServingLayer(Settings(redis="redis://127.0.0.1:1/0"), lambda user_id: None)


BUCKET = {"p": 0, "o": 7, "n": {"calls": 3, "deals_won": 1, "deals_closed": 2}, "s": {}}
KEY = "u|d:2026-11-23|ann"


def _scored(layer: ServingLayer) -> set[str]:
    return {board.split(":")[2] for board, _ in layer._staged.scores}


def test_without_changes_every_kpi_is_staged() -> None:
    layer = _layer()
    layer.stage({KEY: BUCKET})
    assert {"calls", "emails", "win_rate", "deals_won"} <= _scored(layer)
    layer = _layer()
    layer.stage({KEY: BUCKET}, changed={KEY: None})  # a new bucket: all
    assert {"calls", "emails", "win_rate"} <= _scored(layer)


def test_only_changed_kpis_and_their_ratios_are_staged() -> None:
    layer = _layer()
    layer.stage({KEY: BUCKET}, changed={KEY: frozenset({"calls"})})
    assert _scored(layer) == {"calls"}
    layer = _layer()
    layer.stage({KEY: BUCKET}, changed={KEY: frozenset({"deals_won"})})
    assert _scored(layer) == {"deals_won", "win_rate"}
    layer = _layer()
    layer.stage({KEY: BUCKET}, changed={KEY: frozenset()})  # only the watermark moved
    assert _scored(layer) == set()
