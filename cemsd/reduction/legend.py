"""What the flags and methods in a report and a bundle mean: one text for the HTML
legend and the bundle's data dictionary."""

from __future__ import annotations

import re

from cemsd.flags import MEANINGS

FLAGS = {flag.value: text for flag, text in MEANINGS.items()}
FLAGS["-"] = "no hour stored (the daemon was not running)"

# method name pattern -> meaning; {n} is the look-back's hours
METHODS: list[tuple[str, str]] = [
    (r"measured", "measured: the hour is valid (flag N)"),
    (r"missing", "missing: invalid and not substituted (an inlet hour counts as 0; an outlet "
                 "hour blocks crediting)"),
    (r"hj75\.(missing|out_of_control)\.max_(\d+)h_before(_check)?",
     "HJ 75 substitute, project side: the highest of the {n} valid hours before the gap "
     "(before the failing check for _check)"),
    (r"hj75\.(missing|out_of_control)\.min_(\d+)h_before(_check)?",
     "baseline side [U]: the lowest of the {n} valid hours the HJ 75 tier names"),
    (r"hj75\.missing\.before_after_mean",
     "HJ 75 substitute, project side: mean of the valid hours just before and after"),
    (r"hj75\.missing\.before_after_min",
     "baseline side [U]: the lower of the valid hours just before and after"),
    (r"zero\.capture_rate_below_75", "baseline side [U]: zero, no HJ 75 rule below 75 %"),
    (r"zero\.no_valid_hour_before", "baseline side [U]: zero, no valid hour in the look-back"),
    (r"zero\.configured", "baseline side: zero ([qaqc] baseline_substitution = \"zero\")"),
    (r"measured_inlet_x_bypass_flow",
     "bypass: inlet concentration x the bypass-duct flow, minute by minute"),
    (r"measured_inlet", "bypass: the whole measured inlet stream skipped the unit"),
    (r"estimated_max_hourly_inlet_(\d+)h",
     "alternative method: unmonitored venting estimated as the highest hourly inlet mass "
     "of the last {n} hours"),
]


def method_meaning(method: str) -> str:
    """The meaning of a method name as it appears in a report ("a: 30 min; b: 5 min"
    lists are split)."""
    name = method.split(":")[0].strip()
    for pattern, text in METHODS:
        match = re.fullmatch(pattern, name)
        if match:
            digits = [g for g in match.groups() if g and g.isdigit()]
            return text.format(n=digits[0] if digits else "")
    return "not a method cemsd writes"


def methods_in(report: dict) -> list[str]:
    """Every distinct method the report's hours use, sorted."""
    seen: set[str] = set()
    for hour in report["hours"]:
        for key in ("inlet_method", "outlet_method", "bypass_method", "vent_method"):
            for part in (hour.get(key) or "").split(";"):
                name = part.split(":")[0].strip()
                if name:
                    seen.add(name)
    return sorted(seen)
