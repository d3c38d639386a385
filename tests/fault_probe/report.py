"""Renders OUT/results.json of probe.py as the markdown tables of docs/fault-probe.md: the
totals, then one row per case with what was observed (from the case's evidence) and its
verdict.

    python tests/fault_probe/report.py runs/probe/results.json > tables.md
"""

from __future__ import annotations

import json
import re
import sys

SECTIONS = {"A": "A. meta-training lifecycle", "B": "B. corrupt files",
            "C": "C. bad CLI / config input", "D": "D. library input", "E": "E. eval"}
VERDICTS = ("GOOD", "POOR", "BAD", "NOT RUN", "ERROR")


def _short(text, n=150):
    text = " ".join(str(text).split())
    for long in ("/work/wt-probe/", "runs/probe/cases/"):
        text = text.replace(long, "")
    text = re.sub(r"\S+\.py:\d+: (\w+Warning): ", r"\1: ", text)
    text = text if len(text) <= n else text[: n - 1] + "…"
    return text.replace("|", "\\|")


def observed(c: dict) -> str:
    """A few words from a case's evidence: exit codes, the last line, where a resume
    started, and the bitwise check."""
    e, parts = c["evidence"], []
    if c.get("not_run"):
        return _short(c["not_run"])
    for key in ("r", "first", "signalled", "a", "b"):
        if isinstance(e.get(key), dict) and "rc" in e[key]:
            r = e[key]
            line = r.get("last_line") or " / ".join(r.get("tail", [])[-1:])
            if r["rc"] == 0 and not line.startswith(("error", "resumed", "waiting")):
                line = ""       # the end of a report or a progress line
            parts.append(f"{key if key != 'r' else ''} rc {r['rc']}" + (
                f": `{_short(line, 110)}`" if line else ""))
    if e.get("warnings") and isinstance(e["warnings"], list) and "load" not in e:
        parts.append(f"`{_short(e['warnings'][0], 140)}`")
    if e.get("error"):
        parts.append(f"`{_short(e['error'], 170)}`")
    if isinstance(e.get("load"), dict):
        ld = e["load"]
        parts.append(f"load: step {ld.get('step')}" if not ld.get("error") else
                     f"load: `{_short(ld['error'], 90)}`")
        if ld.get("warnings"):
            parts[-1] += " with a warning"
    if e.get("hint"):
        parts.append(f"hint `{_short(e['hint'], 80)}`" + (
            f" rc {e['hint_run']['rc']}" if "hint_run" in e else ""))
    if isinstance(e.get("resume"), dict):
        res = e["resume"]
        got = (res.get("resumed") or [res.get("last_line", "")])[:1]
        parts.append(f"resume rc {res.get('rc')}" + (f" ({_short(got[0], 90)})" if got and got[0]
                                                     else ""))
    if isinstance(e.get("theta"), dict):
        t = e["theta"]
        parts.append("theta **bitwise equal**" if t.get("equal") else
                     f"theta differs (step {t.get('step')})")
    if "sweep" in e:
        s = e["sweep"]
        parts.append(f"sweep: {s['flips']} flips, {s['fell_back']} fell back, "
                     f"{s['no_effect']} no effect, {s['silent_changed']} silent")
    if not parts:   # the case's own evidence, compactly
        parts = [f"{k}: {json.dumps(v, ensure_ascii=False)}" for k, v in e.items()
                 if k not in ("warnings",) and len(json.dumps(v)) < 160]
        if not parts:
            parts = ["checks held: " + "; ".join(x["what"] for x in c["checks"])]
    if c["failed"]:
        parts.append("failed: " + "; ".join(c["failed"]))
    return _short("; ".join(p.strip() for p in parts if p), 400)


def render(doc: dict) -> str:
    cases = doc["cases"]
    out = ["| section | cases | " + " | ".join(VERDICTS[:4]) + " |",
           "|---|---:|" + "---:|" * 4]
    tot = {v: 0 for v in VERDICTS}
    for s, name in SECTIONS.items():
        cs = [c for k, c in cases.items() if k[0] == s]
        counts = {v: sum(c["verdict"] == v for c in cs) for v in VERDICTS}
        for v in VERDICTS:
            tot[v] += counts[v]
        out.append(f"| {name} | {len(cs)} | " + " | ".join(str(counts[v]) for v in VERDICTS[:4])
                   + " |")
    out.append(f"| **total** | **{len(cases)}** | " + " | ".join(
        f"**{tot[v]}**" for v in VERDICTS[:4]) + " |")
    if tot["ERROR"]:
        out.append(f"\n{tot['ERROR']} case(s) ended in a driver error.")
    for s, name in SECTIONS.items():
        out += ["", f"## {name}", "", "| # | case | observed | verdict |", "|---|---|---|---|"]
        for k in sorted(k for k in cases if k[0] == s):
            c = cases[k]
            v = c["verdict"] if c["verdict"] == "GOOD" else f"**{c['verdict']}**"
            out.append(f"| {k} | {c['case']} | {observed(c)} | {v} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render(json.load(open(sys.argv[1] if len(sys.argv) > 1
                                           else "runs/probe/results.json"))))
