"""The live loop's report: frame times in the layout of the paper's Table 2, per-stage times and
the frame counts, as rich tables."""

from __future__ import annotations

from typing import Any

from rtseg.live.stats import TABLE2_FIELDS


def table2_table(rows: list[dict[str, Any]], title: str, first: str = "run"):
    """A rich table in the layout of the paper's Table 2 (rows: dicts with TABLE2 keys)."""
    from rich.table import Table

    t = Table(title=title)
    t.add_column(first)
    for k in TABLE2_FIELDS:
        t.add_column(k + (" [ms]" if "time" in k else ""), justify="right")
    for r in rows:
        t.add_row(r["label"], *[_fmt(r.get(k)) for k in TABLE2_FIELDS])
    return t


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def print_report(console, result: dict[str, Any]) -> None:
    from rich.table import Table

    t2 = result["table2"]
    console.print(table2_table([{"label": f"{result['backend']} ({result['device']})", **t2}],
                               "end-to-end frame times (Table 2 layout)", "backend"))
    st = Table(title="per-stage times per frame [ms]")
    for c in ("stage", "avg", "median", "min", "max"):
        st.add_column(c, justify="right" if c != "stage" else "left")
    for k, v in result["stages_ms"].items():
        st.add_row(k, *(f"{v[c]:.2f}" for c in ("avg", "median", "min", "max")))
    console.print(st)
    lat = result.get("latency_ms") or {}
    if lat.get("count"):
        console.print(f"latency capture -> overlay ready [ms]: median {lat['median']:.1f}, "
                      f"p95 {lat['p95']:.1f}, p99 {lat['p99']:.1f} (Av-fps {t2['Av-fps']:.1f})",
                      markup=False)
    console.print(
        f"frames read {result['frames_read']}, processed {result['frames_processed']}, "
        f"dropped {result['frames_dropped']}, unreadable {result['frames_unreadable']}"
        + (f", written {result['frames_written']} to {result['saved']}" if result["saved"] else "")
        + (f" | called polyp {result['frames_called_polyp']} (call smoothing {result['call_smoothing']:g})"
           if "frames_called_polyp" in result else "")
        + (" | source lost" if result["source_lost"] else "")
        + (f" | interrupted ({result.get('signal') or 'SIGINT'})" if result["interrupted"] else ""),
        markup=False)
