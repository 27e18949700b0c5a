"""The report as one self-contained HTML page: summary, reasons, parameters, a chart of
hourly inlet and outlet N2O mass (chart.py: missing hours shaded, bypass marked,
substituted hours labelled S), a legend of flags and methods, and the hourly table. No
scripts, no external files: it prints and archives as it is."""

from __future__ import annotations

from html import escape
from typing import Any

from cemsd.reduction.chart import substituted, svg_chart
from cemsd.reduction.legend import FLAGS, method_meaning, methods_in

HOURS_SHOWN_OPEN = 31 * 24 + 1  # a longer hourly table starts folded


def to_html(report: dict[str, Any]) -> str:
    r, period, plant = report["result"], report["period"], report["plant"]
    draft = period.get("draft")
    title = (f"N2O emission reductions, {plant['name'] or plant['id']}, "
             f"{period.get('name') or period['from'][:10]}{' (DRAFT)' if draft else ''}")
    status = ("creditable" if r["creditable"] else "NOT creditable: " + "; ".join(r["reasons"]))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>
<style>
body{{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222;max-width:1100px}}
table{{border-collapse:collapse;margin:1em 0}} td,th{{border:1px solid #ccc;padding:2px 6px;
text-align:right}} th{{background:#f3f3f3}} td:first-child,th:first-child{{text-align:left}}
.bad{{color:#a00;font-weight:bold}} .ok{{color:#070;font-weight:bold}}
.hours td{{font-size:12px}} .S{{background:#fff3c4}} .byp{{background:#fde0e0}}
.draft{{border:3px solid #a00;color:#a00;padding:.4em 1em;font-size:18px;font-weight:bold}}
</style></head><body>
<h1>{escape(title)}</h1>
{_draft(period)}
<p>Period {escape(period['from'])} to {escape(period['to'])} ({period['hours']} hours),
plant time {escape(plant['timezone'])}. cemsd {escape(report['software']['cemsd'])}.
Inputs SHA-256 <code>{escape(report['inputs_sha256'])}</code>.</p>
<p class="{'ok' if r['creditable'] else 'bad'}">{escape(status)}</p>
{_summary(report)}
{_warnings(r)}
{_units(report)}
{_charts(report)}
{_legend(report)}
{_events(report)}
{_parameters(report)}
{_hours(report)}
</body></html>
"""


def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return escape(str(value))


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def _summary(report: dict[str, Any]) -> str:
    r, t, p = report["result"], report["result"]["totals"], report["parameters"]
    rows = [
        ("N2O generated (inlet)", t["n2o_generated_t"], "t"),
        ("N2O leaving the unit (outlet)", t["n2o_outlet_t"], "t"),
        ("N2O bypassed or vented", t["n2o_bypass_t"], "t"),
        ("  of which estimated (alternative method)", t["bypass_estimated_t"], "t"),
        ("Project emissions", r["project_emissions_t"], "t"),
        ("Destruction efficiency, unit (mass)", _pct(r["de_unit"]), ""),
        ("Destruction efficiency, overall (mass)", _pct(r["de_overall"]), ""),
        (f"Baseline ({p['baseline']}, {p['baseline_destruction']:.0%})", r["baseline_t"], "t"),
        ("Reduction before cap", r["er_raw_t"], "t"),
        ("Production / cap for the period", f"{_num(report['production']['total_t'], 1)} / "
         f"{_num(report['production']['cap_t'], 1)}", "t"),
        ("Cap factor", r["cap_factor"], ""),
        ("Emission reduction", r["er_t"], "t N2O"),
        (f"Emission reduction (GWP {p['gwp']:g}: {p['gwp_source']})", r["er_co2e_t"], "t CO2e"),
        ("Credited", r["credited_co2e_t"], "t CO2e"),
        ("Project side: substituted outlet share of project emissions",
         _pct(r.get("outlet_substituted_share")), ""),
        ("Project side: estimated bypass share of project emissions",
         _pct(r.get("bypass_estimated_share")), ""),
        ("Project side: estimated or substituted share (25 % rule)",
         _pct(r["alternative_share"]), f"limit {p['share_limit']:.0%}"),
        ("Baseline side: substituted inlet share of N2O generated (25 % rule)",
         _pct(r.get("inlet_substituted_share")), f"limit {p['share_limit']:.0%}"),
    ]
    body = "".join(f"<tr><td>{escape(a)}</td><td>{b if isinstance(b, str) else _num(b)}</td>"
                   f"<td>{escape(c)}</td></tr>" for a, b, c in rows)
    return f"<h2>Summary</h2><table>{body}</table>"


def _warnings(r: dict[str, Any]) -> str:
    items = [*(f"<li class='bad'>{escape(x)}</li>" for x in r["reasons"]),
             *(f"<li>{escape(x)}</li>" for x in r["warnings"])]
    return f"<ul>{''.join(items)}</ul>" if items else ""


def _units(report: dict[str, Any]) -> str:
    """Each abatement unit's figures beside the plant's (plants of several units)."""
    units = report.get("units", {})
    if len(units) < 2:
        return ""
    head = ("<tr><th>unit</th><th>inlet / outlet</th><th>generated, t</th><th>outlet, t</th>"
            "<th>bypassed, t</th><th>DE unit</th><th>reduction, t N2O</th><th>creditable</th>"
            "</tr>")
    rows = []
    for name, u in [*units.items(), ("plant", {"result": report["result"]})]:
        r, t = u["result"], u["result"]["totals"]
        points = f"{u['inlet']} / {u['outlet']}" if "inlet" in u else "sum of the units"
        rows.append(f"<tr><td>{escape(name)}</td><td>{escape(points)}</td>"
                    f"<td>{_num(t['n2o_generated_t'])}</td><td>{_num(t['n2o_outlet_t'])}</td>"
                    f"<td>{_num(t['n2o_bypass_t'])}</td><td>{_pct(r['de_unit'])}</td>"
                    f"<td>{_num(r['er_t'])}</td><td>{'yes' if r['creditable'] else 'no'}</td>"
                    "</tr>")
    return f"<h2>Abatement units</h2><table>{head}{''.join(rows)}</table>"


def _charts(report: dict[str, Any]) -> str:
    """The hourly chart: one for the plant, or one per abatement unit."""
    units = list(report.get("units", {}))
    if len(units) < 2:
        return f"<h2>Hourly N2O mass</h2>\n{svg_chart(report['hours'])}"
    return "".join(f"<h2>Hourly N2O mass, {escape(name)}</h2>\n"
                   f"{svg_chart([h for h in report['hours'] if h.get('unit') == name])}"
                   for name in units)


def _draft(period: dict[str, Any]) -> str:
    if not period.get("draft"):
        return ""
    return (f'<p class="draft">DRAFT: {escape(period["from"])} to {escape(period["to"])} '
            f'only, of the period to {escape(period.get("asked_to", period["to"]))}; '
            "production is incomplete. Not creditable.</p>")


def _legend(report: dict[str, Any]) -> str:
    flags = "".join(f"<tr><td>{escape(f)}</td><td>{escape(t)}</td></tr>"
                    for f, t in FLAGS.items())
    methods = "".join(f"<tr><td><code>{escape(m)}</code></td><td>{escape(method_meaning(m))}"
                      "</td></tr>" for m in methods_in(report))
    return ("<h2>Legend</h2><div class='legend'><table><tr><th>flag</th><th>meaning</th>"
            f"</tr>{flags}<tr><td>S</td><td>in the hourly table: the hour was substituted "
            "(its stored flag in brackets)</td></tr></table>"
            f"<table><tr><th>method</th><th>meaning</th></tr>{methods}</table></div>")


def _events(report: dict[str, Any]) -> str:
    events = report["bypass_events"]
    if not events:
        return "<h2>Bypass events</h2><p>None in this period.</p>"
    head = "<tr><th>#</th><th>abatement unit</th><th>start</th><th>end</th><th>min</th>" \
           "<th>triggers</th><th>gas, m3</th><th>N2O, kg</th><th>estimated, kg</th>" \
           "<th>method</th></tr>"
    rows = "".join(
        f"<tr><td>{e['id']}</td><td>{escape(e.get('unit') or '')}</td>"
        f"<td>{escape(e['start'])}</td><td>{escape(e['end'] or 'open')}"
        f"</td><td>{_num(e['duration_min'], 1)}</td><td>{escape(', '.join(e['triggers']))}</td>"
        f"<td>{_num(e['gas_volume_nm3'], 1)}</td><td>{_num(e['n2o_kg'], 3)}</td>"
        f"<td>{_num(e['n2o_estimated_kg'], 3)}</td><td>{escape(e['method'] or '')}</td></tr>"
        for e in events)
    return f"<h2>Bypass events</h2><table>{head}{rows}</table>"


def _parameters(report: dict[str, Any]) -> str:
    rows = "".join(f"<tr><td>{escape(k)}</td><td>{_num(v)}</td></tr>"
                   for k, v in report["parameters"].items())
    return f"<h2>Parameters</h2><table>{rows}</table>"


def _hours(report: dict[str, Any]) -> str:
    head = ("<tr><th>abatement unit</th><th>hour</th><th>inlet kg</th><th>flag</th>"
            "<th>method</th><th>outlet kg</th><th>flag</th><th>method</th><th>bypass kg</th>"
            "<th>vent kg</th><th>unit</th>"
            "<th>note</th></tr>")
    rows = []
    for h in report["hours"]:
        note = "stopped" if h["stopped"] else ("start-up" if h["startup"] else "")
        cls = "byp" if (h["bypass_kg"] or h["vent_kg"]) else (
            "S" if substituted(h["inlet_method"]) or substituted(h["outlet_method"]) else "")
        rows.append(
            f"<tr class='{cls}'><td>{escape(h.get('unit', ''))}</td><td>{escape(h['hour'])}</td>"
            f"<td>{_num(h['inlet_kg'], 3)}</td>"
            f"<td>{_flag(h['inlet_flag'], h['inlet_method'])}</td>"
            f"<td>{escape(h['inlet_method'])}</td>"
            f"<td>{_num(h['outlet_kg'], 3)}</td>"
            f"<td>{_flag(h['outlet_flag'], h['outlet_method'])}</td>"
            f"<td>{escape(h['outlet_method'])}</td><td>{_num(h['bypass_kg'], 3)}</td>"
            f"<td>{_num(h['vent_kg'], 3)}</td><td>{'on' if h['unit_running'] else 'bypassed'}"
            f"</td><td>{note}</td></tr>")
    table = f"<table class='hours'>{head}{''.join(rows)}</table>"
    shown = " open" if len(report["hours"]) <= HOURS_SHOWN_OPEN else ""
    return (f"<h2>Hours</h2><details{shown}><summary>{len(report['hours'])} hours</summary>"
            f"{table}</details>")


def _flag(stored: str, method: str) -> str:
    """S for a substituted hour, with the flag stored for the measurement."""
    return f"S ({escape(stored)})" if substituted(method) else escape(stored)
