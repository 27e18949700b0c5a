"""Tables. Every timestamp is UTC (naive in the database, aware in Python).

Minute and hour tables share one shape: value with min/max, valid and expected
sub-value counts, flag, reason and unit, unique per (channel, ts, revision) so that
closing a period twice (after a restart) can never duplicate it. Stored periods are never
changed in place: a correction is a new row with the next revision that names the row it
supersedes; the current value of a period is its highest revision.

QA/QC records (calibrations, maintenance windows, control periods, substituted hours, the
audit log) are append-only in the same way: ending a window or superseding a
substitution adds or closes a record, and the audit log says who did it and why.

The MQTT outbox holds each message until the broker acknowledged it (cemsd/outbox.py).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.types import TypeDecorator

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UTCDateTime(TypeDecorator[datetime]):
    """Accepts aware datetimes or epoch seconds; stores naive UTC; returns aware UTC."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, int | float):
            return datetime.fromtimestamp(value, UTC).replace(tzinfo=None)
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


Identifier = BigInteger().with_variant(Integer, "sqlite")  # SQLite autoincrements INTEGER only
Double = Float(precision=53)

# Readings are packed, many to a row (cemsd/store/packing.py, docs/decisions/0220): a
# block of one writer batch, keyed by its first reading's time in integer microseconds.
reading_channels = Table(
    "reading_channels",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),  # uint16 in the blocks
    Column("name", String(100), nullable=False),
    UniqueConstraint("name"),
)

reading_blocks = Table(
    "reading_blocks",
    metadata,
    Column("id", Identifier, primary_key=True, autoincrement=True),  # the write order
    Column("start", BigInteger, nullable=False),  # first reading, µs since the epoch (UTC)
    Column("n", Integer, nullable=False),  # readings in the block
    Column("data", LargeBinary, nullable=False),
    # BRIN on PostgreSQL: blocks arrive in time order, a few pages index them all (a range
    # of 16 pages: a minute's read visits ~128 kB of heap, not 1 MB)
    Index(None, "start", postgresql_using="brin", postgresql_with={"pages_per_range": 16}),
)


def _aggregate_table(name: str) -> Table:
    return Table(
        name,
        metadata,
        Column("id", Identifier, primary_key=True, autoincrement=True),
        Column("channel", String(100), nullable=False),
        Column("ts", UTCDateTime, nullable=False),  # period start
        Column("value", Double),
        Column("minimum", Double),
        Column("maximum", Double),
        Column("n_valid", Integer, nullable=False),
        Column("n_expected", Integer, nullable=False),
        Column("flag", String(1), nullable=False),
        Column("reason", Text),
        Column("unit", String(16), nullable=False),
        Column("created_at", UTCDateTime, nullable=False),
        Column("revision", Integer, nullable=False, server_default="0"),
        Column("supersedes", Identifier),  # id of the row this correction replaces
        Column("audit_id", Identifier),  # the audited correction behind a revision above 0
        UniqueConstraint("channel", "ts", "revision"),
        Index(None, "ts"),
    )


minutes = _aggregate_table("minutes")
hours = _aggregate_table("hours")

channels = Table(
    "channels",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("device", String(64)),
    Column("key", String(64)),
    Column("role", String(32)),
    Column("point", String(64)),
    Column("unit", String(16), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("range_low", Double),
    Column("range_high", Double),
    Column("description", Text),
    Column("updated_at", UTCDateTime, nullable=False),
)

daemon_runs = Table(
    "daemon_runs",
    metadata,
    Column("id", Identifier, primary_key=True, autoincrement=True),
    Column("started_at", UTCDateTime, nullable=False),
    Column("stopped_at", UTCDateTime),
    Column("clock", String(32), nullable=False),
    Column("version", String(32), nullable=False),
    Column("config_path", Text),
    Column("config_sha256", String(64)),
    Column("host", String(255)),
    Column("exit_reason", Text),
)


# --- QA/QC (HJ 75-2017 §11-12) ---------------------------------------------------------

calibrations = Table(
    "calibrations",
    metadata,
    Column("id", Identifier, primary_key=True, autoincrement=True),
    Column("channel", String(100), nullable=False),
    Column("kind", String(8), nullable=False),  # zero | span
    Column("mode", String(16), nullable=False),  # automatic | remote | manual
    Column("started_at", UTCDateTime, nullable=False),
    Column("ended_at", UTCDateTime),
    Column("reference", Double, nullable=False),  # reference gas value, channel unit
    Column("measured", Double),  # mean of the stable readings (or read off the display)
    Column("full_scale", Double, nullable=False),
    Column("drift_pct_fs", Double),  # (measured - reference) / full scale * 100
    Column("result", String(16), nullable=False),  # pass | adjust | out_of_control | aborted
    Column("pass_limit_pct", Double, nullable=False),
    Column("control_limit_pct", Double, nullable=False),
    Column("n_readings", Integer),
    Column("stabilisation_s", Double),
    Column("technician", String(100), nullable=False),
    Column("note", Text),
    Column("created_at", UTCDateTime, nullable=False),
    Index(None, "channel", "started_at"),
)

maintenance = Table(
    "maintenance",
    metadata,
    Column("id", Identifier, primary_key=True, autoincrement=True),
    Column("device", String(64)),  # a whole device, or
    Column("channel", String(100)),  # one channel
    Column("started_at", UTCDateTime, nullable=False),
    Column("ended_at", UTCDateTime),  # open while NULL
    Column("reason", Text, nullable=False),
    Column("technician", String(100), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("planned_end_at", UTCDateTime),  # closes by itself then (NULL: only by hand)
)

control_periods = Table(
    "control_periods",
    metadata,
    Column("id", Identifier, primary_key=True, autoincrement=True),
    Column("channel", String(100), nullable=False),
    Column("kind", String(24), nullable=False),  # out_of_control | calibration_overdue
    Column("started_at", UTCDateTime, nullable=False),
    Column("ended_at", UTCDateTime),  # open while NULL
    Column("opened_by", Identifier),  # calibration id that failed (or NULL: overdue)
    Column("closed_by", Identifier),  # calibration id that passed
    Column("reason", Text, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Index(None, "channel", "started_at"),
)

substitutions = Table(
    "substitutions",
    metadata,
    Column("id", Identifier, primary_key=True, autoincrement=True),
    Column("channel", String(100), nullable=False),  # the series substituted (e.g. kg/h)
    Column("ts", UTCDateTime, nullable=False),  # the hour replaced
    Column("value", Double, nullable=False),
    Column("unit", String(16), nullable=False),
    Column("flag", String(1), nullable=False, server_default="S"),
    Column("method", String(64), nullable=False),  # e.g. hj75.missing.before_after_mean
    Column("period_kind", String(24), nullable=False),  # missing | out_of_control
    Column("period_start", UTCDateTime, nullable=False),
    Column("period_hours", Integer, nullable=False),
    Column("capture_rate", Double),  # the quarter's valid-hour rate the tier came from
    Column("source_hours", Text, nullable=False),  # JSON list of the hours used
    Column("created_at", UTCDateTime, nullable=False),
    Column("revision", Integer, nullable=False, server_default="0"),
    Column("supersedes", Identifier),
    Column("audit_id", Identifier),  # the audited correction behind a revision above 0
    UniqueConstraint("channel", "ts", "revision"),
    Index(None, "ts"),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Identifier, primary_key=True, autoincrement=True),
    Column("at", UTCDateTime, nullable=False),
    Column("actor", String(100), nullable=False),  # a person, or "cemsd" for the daemon
    Column("action", String(64), nullable=False),  # e.g. calibration.record, config.change
    Column("target", String(200)),
    Column("reason", Text),
    Column("before", Text),  # JSON
    Column("after", Text),  # JSON
    Column("host", String(255)),
)


# --- MQTT outbox (store-and-forward) ----------------------------------------------------

mqtt_outbox = Table(
    "mqtt_outbox",
    metadata,
    # The delivery order and the message id consumers see; AUTOINCREMENT so SQLite never
    # reuses the id of a pruned row (consumers detect QoS 1 duplicates by it).
    Column("id", Identifier, primary_key=True, autoincrement=True),
    Column("topic", String(255), nullable=False),
    Column("payload", Text, nullable=False),  # JSON object, without the message id
    Column("period", String(8)),  # minute | hour for period messages (restart back-fill)
    Column("period_start", UTCDateTime),
    Column("qos", Integer, nullable=False),
    Column("retain", Boolean, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),  # daemon clock
    Column("attempts", Integer, nullable=False, server_default="0"),  # batches it was in
    Column("sent_at", UTCDateTime),  # daemon clock when the broker acknowledged; NULL: unsent
    Index(None, "sent_at", "id"),
    sqlite_autoincrement=True,
)


# --- HJ 212 uplink (cemsd.hj212) ------------------------------------------------------------

hj212_cursor = Table(
    "hj212_cursor",
    metadata,
    Column("platform", String(64), primary_key=True),
    Column("cn", String(4), primary_key=True),
    # every period starting before this has been acknowledged by the platform
    Column("acked_until", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)


# --- Registry API and tamper evidence (cemsd/api/, cemsd/chain.py) -------------------------

api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", Identifier, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False),  # unique among active tokens (checked on create)
    Column("token_hash", String(64), nullable=False),  # SHA-256 hex of the token; never the token
    Column("created_at", UTCDateTime, nullable=False),
    Column("revoked_at", UTCDateTime),
    Column("last_used_at", UTCDateTime),
    UniqueConstraint("token_hash"),
)

chain = Table(
    "chain",
    metadata,
    Column("seq", Identifier, primary_key=True, autoincrement=False),  # 1, 2, 3, ...
    # hours | substitutions | production_days | audit_log (docs/TAMPER-EVIDENCE.md)
    Column("record_table", String(32), nullable=False),
    Column("record_id", Identifier, nullable=False),
    Column("channel", String(100), nullable=False),  # copies, to name a deleted record
    Column("ts", UTCDateTime, nullable=False),
    Column("form", Integer, nullable=False),  # version of the canonical form hashed
    Column("record_hash", String(64), nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("chain_hash", String(64), nullable=False),
    Column("sealed_at", UTCDateTime, nullable=False),
    # form 2 hours: the digest of the minutes under the hour, also inside record_hash; kept
    # here so that verify can tell "minutes changed" from "record changed"
    Column("minutes_sha256", String(64)),
    UniqueConstraint("record_table", "record_id"),  # each record is sealed exactly once
)


# The pre-serialised answer of /v1/hours/columns for one channel's sealed UTC day, with what
# it was built from: served only while the day's rows and its last link still match
# (cemsd/api/routes/sealed_days.py, decision 0260). A cache: deleting rows loses nothing.
hour_column_days = Table(
    "hour_column_days",
    metadata,
    Column("channel", String(100), primary_key=True),
    Column("day", BigInteger, primary_key=True, autoincrement=False),  # UTC, epoch seconds
    Column("hours", Integer, nullable=False),  # hour rows of the day, every revision
    Column("last_hour_id", Identifier, nullable=False),
    Column("substitutions", Integer, nullable=False),  # substitution rows, every revision
    Column("last_substitution_id", Identifier),
    Column("last_seq", Identifier, nullable=False),  # the day's last link in the chain
    Column("chain_hash", String(64), nullable=False),  # that link's chain hash
    Column("units", Text, nullable=False),  # JSON list of the day's distinct units
    Column("last_unit", String(16), nullable=False),
    # the items of each array of the answer (JSON text without the brackets): each hour's
    # unit, then the arrays in the order of the answer
    *(Column(f"json_{name}", Text, nullable=False) for name in (
        "units", "start_epoch", "value", "flag", "n_valid", "revision", "substitute_value",
        "substitute_method", "seal_seq")),
    # the same days in the compact layout (decision 0261): runs instead of items; `value`
    # is json_value
    *(Column(f"compact_{name}", Text, nullable=False) for name in (
        "units", "start_epoch", "flag", "n_valid", "revision", "substitute_value",
        "substitute_method", "seal_seq")),
)

# --- Bypass events and production (emission reductions, cemsd/reduction/) ----------------

bypass_events = Table(
    "bypass_events",
    metadata,
    Column("id", Identifier, primary_key=True, autoincrement=True),
    Column("started_at", UTCDateTime, nullable=False),
    Column("ended_at", UTCDateTime),  # open while NULL; closed once, with the figures below
    Column("triggers", Text, nullable=False),  # JSON list: valve, abatement_stopped, ...
    Column("gas_volume_nm3", Double),  # dry, standard state
    Column("n2o_kg", Double),  # all N2O that skipped the unit
    Column("n2o_estimated_kg", Double),  # the part estimated (unmonitored venting)
    Column("method", Text),  # how the mass was obtained, with minute counts
    Column("created_at", UTCDateTime, nullable=False),
    # the abatement unit (config [[units]]); NULL: recorded before units existed, the
    # plant's first unit
    Column("unit", String(64)),
    Index(None, "started_at"),
)

production_days = Table(
    "production_days",
    metadata,
    Column("id", Identifier, primary_key=True, autoincrement=True),
    Column("day", Date, nullable=False),  # plant-local date
    Column("tonnes", Double, nullable=False),  # adipic acid produced
    Column("source", Text, nullable=False),  # e.g. "import:production-2026-10.csv"
    Column("created_at", UTCDateTime, nullable=False),
    Column("revision", Integer, nullable=False, server_default="0"),
    Column("supersedes", Identifier),
    Column("audit_id", Identifier),  # the audited import or correction that wrote it
    UniqueConstraint("day", "revision"),
)
