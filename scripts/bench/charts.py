#!/usr/bin/env python3
"""Charts of a scripts/bench/run results file: one PNG per path with a column per scenario and
three rows: requests/s, server CPU per response, p99 latency. The HTTP references (path http)
join the direct chart, in their own colour; they get a chart of their own only when the run
measured no direct path.

    python charts.py target/bench/results.json docs/bench/

Needs matplotlib (scripts/bench/run uses the benchmark venv's python); renders with Agg.
"""

import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import PATHS, SCENARIOS, SERVERS  # noqa: E402

ROWS = [("rps", "requests/s (higher is better)", 1),
        ("cpu_us", "server CPU µs per response (lower is better)", 1),
        ("p99_ms", "p99 latency, ms (lower is better)", 1)]
TITLES = {
    "direct": "Direct: pyfcgi bench → FastCGI server (Unix socket); HTTP servers: wrk → server",
    "nginx": "wrk → nginx → FastCGI server (Unix socket)",
    "http": "HTTP reference: wrk → HTTP server (no nginx)",
}
PYFCGI_COLOUR, PEER_COLOUR, C_COLOUR, HTTP_COLOUR, FAILED_COLOUR = (
    "#d95f02", "#7570b3", "#1b9e77", "#a6761d", "#bbbbbb")


def bar_colour(server):
    if server == "pyfcgi":
        return PYFCGI_COLOUR
    if server == "c":
        return C_COLOUR
    return HTTP_COLOUR if SERVERS[server].kind == "http" else PEER_COLOUR


def chart(results, path, out_dir):
    measured = {s["path"] for s in results["summary"]}
    if path == "http" and "direct" in measured:
        return None  # drawn with the direct path
    paths = ("direct", "http") if path == "direct" else (path,)
    cells = [s for s in results["summary"] if s["path"] in paths]
    scenarios = [n for n in results["config"]["scenarios"] if any(c["scenario"] == n for c in cells)]
    servers = [n for n in results["config"]["servers"] if any(c["server"] == n for c in cells)]
    if not cells:
        return None
    by = {(c["scenario"], c["server"]): c for c in cells}
    fig, axes = plt.subplots(len(ROWS), len(scenarios), squeeze=False,
                             figsize=(2.9 * len(scenarios) + 1.2,
                                      1.0 + 0.42 * max(len(servers), 4) * len(ROWS)))
    for col, scenario in enumerate(scenarios):
        for row, (key, label, _) in enumerate(ROWS):
            ax = axes[row][col]
            names, values, colours = [], [], []
            for server in servers:  # one row per server in every column, so labels line up
                c = by.get((scenario, server))
                names.append(SERVERS[server].label)
                ok = c is not None and c["ok"] and c[key] is not None
                values.append(c[key] if ok else 0)
                colours.append(None if c is None else bar_colour(server) if ok else FAILED_COLOUR)
            y = range(len(names))
            ax.barh(y, values, color=[c or "white" for c in colours])
            ax.set_yticks(list(y), names if col == 0 else [""] * len(names), fontsize=8)
            ax.invert_yaxis()
            ax.tick_params(axis="x", labelsize=7)
            top = max(values) if values and max(values) > 0 else 1
            for i, (v, colour) in enumerate(zip(values, colours)):
                text = ("–" if colour is None else "failed" if colour == FAILED_COLOUR
                        else f"{v:,.0f}" if v >= 100 else f"{v:.1f}")
                ax.text(v + top * 0.02, i, text.replace(",", " "), va="center", fontsize=7)
            ax.set_xlim(0, top * 1.35)
            if row == 0:
                ax.set_title(SCENARIOS[scenario].title, fontsize=9)
            if col == 0:
                ax.set_ylabel(label, fontsize=8)
    machine = results["machine"]
    cfg = results["config"]
    fig.suptitle(f"{TITLES[path]}: {cfg['connections']} connections, {cfg['workers']} worker(s), "
                 f"medians of {cfg['reps']} × {cfg['seconds']:g} s; {machine['cpu']}, "
                 f"server pinned to one core", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    out = os.path.join(out_dir, f"{path}.png")
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    with open(sys.argv[1]) as f:
        results = json.load(f)
    os.makedirs(sys.argv[2], exist_ok=True)
    for path in PATHS:
        out = chart(results, path, sys.argv[2])
        if out:
            print(out)


if __name__ == "__main__":
    main()
