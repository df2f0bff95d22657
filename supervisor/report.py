"""``tradepulse report``: the metrics recomputed from the database."""

from __future__ import annotations

import json
from typing import Any

from actors.messages import dumps
from actors.metrics import load_state_sync
from actors.store import DatabaseError
from supervisor.config import Config


def build_report(config: Config) -> dict[str, Any]:
    """Return the metrics document for every stored trade, archived ones included."""
    database = config.service.database_path
    if not database.exists():
        raise DatabaseError(
            f"no database at {database}; start the service with 'tradepulse run' "
            "or import a log with 'tradepulse replay FILE' first"
        )
    _, state = load_state_sync(database, config.service.archive_path)
    return state.snapshot()


def _value(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.2f}"
    return str(value)


_ROWS = (
    ("open", "Open trades"),
    ("resolved", "Resolved trades"),
    ("cancelled", "Cancelled trades"),
    ("wins", "Wins"),
    ("losses", "Losses"),
    ("draws", "Draws"),
    ("win_rate", "Win rate"),
    ("realized_pnl", "Realized PnL"),
    ("gross_profit", "Gross profit"),
    ("gross_loss", "Gross loss"),
    ("profit_factor", "Profit factor"),
    ("open_exposure", "Open exposure"),
)


def format_report(document: dict[str, Any]) -> str:
    """Render the metrics document as a table: all trades, then one column per strategy."""
    columns = [("all", document)] + list(document["by_strategy"].items())
    header = ["metric"] + [name for name, _ in columns]
    rows = [header]
    for key, label in _ROWS:
        row = [label]
        for _, figures in columns:
            value = figures.get(key)
            if key == "win_rate" and value is not None:
                row.append(f"{value:.2%}")
            elif key == "profit_factor" and value is not None:
                row.append(f"{value:.3f}")
            else:
                row.append(_value(value))
        rows.append(row)
    rows.append(["Max drawdown", _value(document["max_drawdown"])] + [""] * (len(columns) - 1))
    decisions = document["decisions"]
    rows.append(
        ["Decisions (trade/hold)", f"{decisions.get('trade', 0)}/{decisions.get('hold', 0)}"]
        + [""] * (len(columns) - 1)
    )

    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for index, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def print_report(config: Config, *, as_json: bool) -> None:
    document = build_report(config)
    if as_json:
        print(json.dumps(json.loads(dumps(document)), indent=2))
    else:
        print(format_report(document))
