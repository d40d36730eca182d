"""Request bodies of the monitoring routes (the answers are the services' plain dicts)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from underlay.monitoring.checks import MAX_ROWS, Window
from underlay.monitoring.drift import DriftOptions, FeatureOverride

ColumnName = Field(min_length=1, max_length=128)


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class FeatureOverrideIn(_In):
    """What one column uses instead of the defaults."""

    kind: Literal["numeric", "categorical"] | None = None
    method: Literal["wasserstein", "psi", "ks", "jensenshannon", "chisquare"] | None = None
    threshold: float | None = Field(default=None, gt=0)
    alpha: float | None = Field(default=None, gt=0, lt=1)


class DriftCheckCreate(_In):
    """A drift check: the window (the last ``rows`` rows, 5,000 when nothing is given; or
    ``since``/``until``; or ``last``, an age such as ``1h``), the reference (else found
    through lineage), the columns and per-column overrides."""

    rows: int | None = Field(default=None, ge=1, le=MAX_ROWS)
    since: Annotated[dt.datetime | None, Field(strict=False)] = None
    until: Annotated[dt.datetime | None, Field(strict=False)] = None
    last: str | None = Field(default=None, max_length=16)
    reference: str | None = Field(default=None, max_length=200)
    target: str | None = Field(default=None, min_length=1, max_length=128)
    columns: list[str] | None = Field(default=None, min_length=1, max_length=1000)
    overrides: dict[str, FeatureOverrideIn] = Field(default_factory=dict, max_length=1000)
    min_rows: int = Field(default=1000, ge=1, le=MAX_ROWS)
    missing_threshold: float = Field(default=0.1, gt=0, le=1)
    store: bool = True

    def window(self) -> Window:
        def stamp(moment: dt.datetime | None) -> float | None:
            if moment is None:
                return None
            return (moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)).timestamp()

        return Window(self.rows, stamp(self.since), stamp(self.until), self.last)

    def options(self) -> DriftOptions:
        return DriftOptions(
            min_rows=self.min_rows,
            missing_threshold=self.missing_threshold,
            columns=None if self.columns is None else tuple(self.columns),
            overrides={
                name: FeatureOverride(o.kind, o.method, o.threshold, o.alpha)
                for name, o in self.overrides.items()
            },
        )
