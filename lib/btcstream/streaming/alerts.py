"""The job's alert stage: 1-minute bars of each batch scored as their minutes complete; alerts delivered.

Each micro-batch hands its valid records' partial 1-minute bars (`BatchCounts.bars`, from the same
Spark job that counts the batch) to `AlertStage`. A minute's bar is complete once the event clock
(the newest event_time stored) is `ALERT_GRACE` past the minute's end; complete bars are scored in
minute order (`btcstream.analytics.alerts.AlertScorer`: robust z-score against the trailing
`alert_window`). A record of a minute already scored still goes to the tables; only its bar is
too late to score, and it is counted (`late_bars`).

An alert is delivered three ways, the table first:
1. appended to `<root>/alerts` (`ALERTS_COLUMNS`, partitioned by date), unless the table already
   holds its (symbol, metric, time): a batch replayed after a crash writes no alert twice;
2. sent to the alerts topic (`Settings.alerts_topic`) as JSON keyed by symbol;
3. given to `Settings.alert_command` (BTCSTREAM_ALERT_COMMAND), if set: run through the shell with
   the alert as JSON on its standard input and in BTCSTREAM_ALERT_SYMBOL/_METRIC/_TIME/_VALUE/
   _BASELINE/_Z; not awaited (a slow command never holds a batch), a failure logged and counted.
Steps 2 and 3 happen once per alert written in step 1: a crash between them loses those two
deliveries of that alert (the table keeps it).

After a (re)start the stage rebuilds its window from the tables (raw_data and trades of the last
2 x alert_window) and scores the rebuilt bars again; alerts among them that the table lacks (the
job stopped before writing them) are delivered then.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Sequence

from btcstream.analytics.alerts import MINUTE, Alert, AlertScorer, MinuteBar, merge_bars, minute_bars
from btcstream.names import ALERTS_DATASET, ALERTS_PARTITION_COLUMNS
from btcstream.settings import SECRET_FIELDS, Settings

log = logging.getLogger(__name__)

ALERT_GRACE = timedelta(seconds=5)  # a minute is scored once the event clock is this far past its end
COMMAND_TIMEOUT_S = 60.0  # an alert command still running after this is killed (and counted as failed)


def _arrow_schema():
    """The alerts table's Arrow schema (`ALERTS_COLUMNS` + the date partition), times UTC."""
    import pyarrow as pa

    moment = pa.timestamp("us", tz="UTC")
    return pa.schema([("symbol", pa.string()), ("time", moment), ("metric", pa.string()), ("value", pa.float64()),
                      ("baseline", pa.float64()), ("mad", pa.float64()), ("z", pa.float64()),
                      ("detected_at", moment), ("date", pa.date32())])


@dataclass(frozen=True)
class AlertCounts:
    """What one batch's alert stage did."""

    raised: int = 0  # alerts written to the table
    late_bars: int = 0  # partial bars of minutes already scored (their records are stored, not scored)
    unpublished: int = 0  # alerts the topic did not take (logged)


class AlertStage:
    """Keeps the open bars and the scorer across batches; `__call__` once per batch, after the tables' write."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.url = settings.storage_url(ALERTS_DATASET)
        self.scorer = AlertScorer(settings.alert_window_span, settings.alert_threshold)
        self.open: dict[tuple[str, datetime], MinuteBar] = {}
        self.ready = False
        self._producer = None
        self.command_failures = 0

    def __call__(self, bars: Sequence[MinuteBar], event_clock: datetime | None) -> AlertCounts:
        if event_clock is None:
            return AlertCounts()
        alerts: list[Alert] = []
        late = 0
        if not self.ready:
            # The batch's records are in the tables already: the rebuild reads them, so its bars are not added again.
            alerts = self._rebuild(event_clock)
            self.ready = True
        else:
            for key, bar in merge_bars(bars).items():
                newest = self.scorer.newest(bar.symbol)
                if newest is not None and bar.minute <= newest:
                    late += 1
                    continue
                self.open[key] = self.open[key].merged(bar) if key in self.open else bar
            alerts = self._score_complete(event_clock)
        if not alerts:
            return AlertCounts(late_bars=late)
        written = self._write(alerts)
        if not written:
            return AlertCounts(late_bars=late)
        unpublished = self._publish(written)
        self._run_command(written)
        return AlertCounts(raised=len(written), late_bars=late, unpublished=unpublished)

    def _score_complete(self, event_clock: datetime) -> list[Alert]:
        """Score the open bars whose minute is complete, in minute order."""
        complete = sorted((key for key in self.open if key[1] + MINUTE + ALERT_GRACE <= event_clock),
                          key=lambda key: (key[1], key[0]))
        alerts: list[Alert] = []
        for key in complete:
            alerts.extend(self.scorer.score(self.open.pop(key)))
        return alerts

    def _rebuild(self, event_clock: datetime) -> list[Alert]:
        """The window rebuilt from the stored quotes and trades; the alerts of the rebuilt bars."""
        from btcstream.storage.readers import TimeRange, read_raw_ticks, read_trades

        span = TimeRange(event_clock - 2 * self.settings.alert_window_span - MINUTE, event_clock + MINUTE)
        quotes = read_raw_ticks(self.settings, span)
        trades = read_trades(self.settings, span)
        self.open = {(bar.symbol, bar.minute): bar for bar in minute_bars(quotes, trades)}
        alerts = self._score_complete(event_clock)
        log.info("alerts: window rebuilt from %d quotes and %d trades, %d alerts among its bars",
                 len(quotes), len(trades), len(alerts))
        return alerts

    def _write(self, alerts: list[Alert]) -> list[Alert]:
        """Append the alerts the table does not hold yet (delta-rs, in the driver: a few rows); returns those."""
        import pyarrow as pa
        from deltalake import write_deltalake

        stored = _stored_keys(self.settings, alerts)
        new = [alert for alert in alerts if (alert.symbol, alert.metric, alert.time) not in stored]
        if new:
            now = datetime.now(timezone.utc)
            rows = [{"symbol": a.symbol, "time": a.time, "metric": a.metric, "value": a.value, "baseline": a.baseline,
                     "mad": a.mad, "z": a.z, "detected_at": now, "date": a.time.date()} for a in new]
            write_deltalake(self.url, pa.Table.from_pylist(rows, schema=_arrow_schema()), mode="append",
                            partition_by=list(ALERTS_PARTITION_COLUMNS))
            for alert in new:
                log.warning("alert: %s %s %s = %.6g, baseline %.6g, z %.1f", alert.symbol, alert.time.isoformat(),
                            alert.metric, alert.value, alert.baseline, alert.z)
        return new

    def _publish(self, alerts: list[Alert]) -> int:
        """Send the alerts to the alerts topic; the number it did not take."""
        from kafka import KafkaProducer

        from btcstream.clients.kafka import kafka_python_options
        from btcstream.ingest.publisher import BOOTSTRAP_TIMEOUT_MS

        try:
            if self._producer is None:
                self._producer = KafkaProducer(bootstrap_servers=self.settings.kafka_bootstrap, acks="all",
                                               bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS, max_block_ms=10_000,
                                               **kafka_python_options(self.settings))
            futures = [self._producer.send(self.settings.alerts_topic, key=alert.symbol.encode(),
                                           value=json.dumps(alert.to_dict()).encode()) for alert in alerts]
            self._producer.flush(timeout=10)
            return sum(1 for future in futures if not future.succeeded())
        except Exception as error:  # noqa: BLE001 - the table holds the alert; the topic is best effort
            log.warning("alerts: %d alerts not sent to topic %s: %s", len(alerts), self.settings.alerts_topic,
                        str(error).splitlines()[0] if str(error) else type(error).__name__)
            return len(alerts)

    def _run_command(self, alerts: list[Alert]) -> None:
        """Start the user's alert command once per alert, without waiting for it."""
        command = self.settings.alert_command
        if not command:
            return
        for alert in alerts:
            threading.Thread(target=self._run_one, args=(command, alert), daemon=True,
                             name="btcstream-alert-command").start()

    def _run_one(self, command: str, alert: Alert) -> None:
        values = alert.to_dict()
        # The user's command gets the job's environment minus btcstream's secrets, plus the alert.
        secrets = {f"BTCSTREAM_{name.upper()}" for name in SECRET_FIELDS}
        env = {key: value for key, value in os.environ.items() if key not in secrets}
        env.update({f"BTCSTREAM_ALERT_{name.upper()}": str(value) for name, value in values.items()})
        try:
            completed = subprocess.run(command, shell=True, input=json.dumps(values).encode(), env=env,
                                       capture_output=True, timeout=COMMAND_TIMEOUT_S, check=False)
            if completed.returncode != 0:
                self.command_failures += 1
                log.warning("alert command exited with %d: %s", completed.returncode,
                            completed.stderr.decode(errors="replace").strip()[:200])
        except (OSError, subprocess.TimeoutExpired) as error:
            self.command_failures += 1
            log.warning("alert command failed: %s", error)

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close(timeout=5)
            self._producer = None


def _stored_keys(settings: Settings, alerts: Sequence[Alert]) -> set[tuple[str, str, datetime]]:
    """(symbol, metric, time) of the stored alerts in the minutes `alerts` span (empty before the table exists)."""
    from btcstream.storage.readers import TimeRange, read_alerts

    span = TimeRange(min(alert.time for alert in alerts), max(alert.time for alert in alerts) + MINUTE)
    stored = read_alerts(settings, span, engine="pyarrow")
    return {(symbol, metric, moment.to_pydatetime())
            for symbol, metric, moment in zip(stored["symbol"], stored["metric"], stored["time"])}
