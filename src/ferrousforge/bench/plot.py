"""PNG chart of a serve benchmark: throughput and time to first token vs concurrency."""

from __future__ import annotations

from pathlib import Path

from ferrousforge.bench.serve_bench import ServeReport


def plot_serve(report: ServeReport, path: Path) -> None:
    """One line per server; needs matplotlib (the `bench` extra)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_tps, ax_ttft) = plt.subplots(1, 2, figsize=(11, 4.2))
    for srv in report.servers:
        xs = [lv.concurrency for lv in srv.levels]
        ax_tps.plot(xs, [lv.tokens_per_s for lv in srv.levels], marker="o", label=srv.name)
        ax_ttft.plot(xs, [lv.ttft_p50_s * 1000 for lv in srv.levels], marker="o", label=srv.name)
        again = [lv.returning.ttft_p50_s * 1000 for lv in srv.levels if lv.returning]
        if len(again) == len(xs):  # workload "returning": the second round's TTFT
            ax_ttft.plot(xs, again, marker="x", linestyle="--", label=f"{srv.name} (again)")
    cfg = report.config
    ax_tps.set(
        xlabel="concurrent requests", ylabel="generated tokens/s (aggregate)", title="Throughput"
    )
    ax_ttft.set(
        xlabel="concurrent requests",
        ylabel="time to first token p50 (ms)",
        title="Time to first token",
    )
    levels = sorted({lv.concurrency for srv in report.servers for lv in srv.levels})
    for ax in (ax_tps, ax_ttft):
        ax.grid(alpha=0.3)
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels, [str(c) for c in levels])
        ax.minorticks_off()
        ax.set_ylim(bottom=0)
        ax.legend()
    fig.suptitle(
        f"workload {cfg.get('workload', 'fresh')}, {cfg['prompt_tokens']} prompt / "
        f"{cfg['max_tokens']} generated tokens per request, {report.started_at}",
        fontsize=9,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
