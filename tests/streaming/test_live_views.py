"""The notebook's live view: its window metrics agree with the job's hourly formula and with pandas."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from btcstream.storage.readers import normalise_frame
from btcstream.streaming import live_views, parse, transforms
from helpers.ticks import kafka_frame, random_ticks

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def enriched(spark):
    ticks = random_ticks(120)
    return transforms.enrich(parse.valid_ticks(parse.classify(kafka_frame(spark, [t.to_json() for t in ticks]))))


def test_one_hour_windows_equal_the_jobs_hourly_metrics(enriched) -> None:
    ours = normalise_frame(live_views.window_metrics(enriched, "1 hour").toPandas())
    jobs = normalise_frame(transforms.hourly_metrics(enriched).toPandas())
    columns = list(live_views.WINDOW_COLUMNS)
    key = ["symbol", "window_start"]
    pd.testing.assert_frame_equal(ours[columns].sort_values(key).reset_index(drop=True),
                                  jobs[columns].sort_values(key).reset_index(drop=True), check_dtype=False)


def test_fifteen_minute_windows_match_pandas(enriched) -> None:
    ours = normalise_frame(live_views.window_metrics(enriched, "15 minutes").toPandas())
    ticks = normalise_frame(enriched.toPandas())
    for (symbol, start), rows in ticks.groupby(["symbol", ticks["event_time"].dt.floor("15min")]):
        ordered = rows.sort_values("event_time")
        mids = ordered.groupby(ordered["event_time"].dt.floor("min"))["mid_price"].last().to_numpy()  # 1-minute grid
        got = ours[(ours["symbol"] == symbol) & (ours["window_start"] == start)].iloc[0]
        assert got["tick_count"] == len(rows)
        assert got["avg_spread_bps"] == pytest.approx(rows["spread_bps"].mean(), rel=1e-12)
        assert got["realized_volatility"] == pytest.approx(np.sqrt(np.sum(np.log(mids[1:] / mids[:-1]) ** 2)),
                                                           rel=1e-9, abs=1e-15)
    assert len(ours) == ticks.groupby(["symbol", ticks["event_time"].dt.floor("15min")]).ngroups
