"""Bar chart of the comparison, run by ``run.py`` in its own venv with matplotlib.

python plot.py results.json out.png
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def main() -> None:
    with open(sys.argv[1]) as handle:
        data = json.load(handle)
    labels = [d["label"] for d in data]
    fig, (rates, latency) = plt.subplots(
        2, 1, figsize=(12, 9), gridspec_kw={"height_ratios": [3, 2]}, constrained_layout=True
    )
    width = 0.27
    x = range(len(labels))
    series = [
        ("enqueue_one", "enqueue, one at a time"),
        ("enqueue_bulk", "enqueue, bulk"),
        ("drain", "drain, 1 worker process"),
    ]
    for i, (key, name) in enumerate(series):
        values = [d[key] or 0 for d in data]
        bars = rates.bar([p + (i - 1) * width for p in x], values, width, label=name)
        for bar, value in zip(bars, values, strict=True):
            if value:
                rates.annotate(
                    f"{value / 1000:.1f}k",
                    (bar.get_x() + bar.get_width() / 2, value),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                    rotation=90,
                    xytext=(0, 2),
                    textcoords="offset points",
                )
    rates.set_yscale("log")
    top = max([d[k] or 0 for d in data for k, _ in series] + [1])
    rates.set_ylim(top=top * 6)  # room for the labels and the legend
    rates.set_ylabel("jobs per second (log scale)")
    rates.set_xticks(list(x), labels, rotation=20, ha="right")
    rates.set_title("Throughput (higher is better); a missing bar: no bulk API or failed")
    rates.legend(loc="upper center", ncol=3, fontsize=8)
    p50 = [d["p50"] or 0 for d in data]
    p99 = [d["p99"] or 0 for d in data]
    latency.bar([p - 0.2 for p in x], p50, 0.4, label="p50")
    latency.bar([p + 0.2 for p in x], p99, 0.4, label="p99")
    latency.set_yscale("log")
    latency.set_ylabel("ms (log scale)")
    latency.set_xticks(list(x), labels, rotation=20, ha="right")
    latency.set_title("Enqueue-to-start latency, idle worker (lower is better)")
    latency.set_ylim(top=max([*p99, 1]) * 6)
    latency.legend(loc="upper center", ncol=2, fontsize=8)
    fig.savefig(sys.argv[2], dpi=110)


if __name__ == "__main__":
    main()
