"""Write benchmark rows as JSON (with the environment) and CSV, and plot them."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import tempfile
from pathlib import Path


def headless_pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend, or ``None`` without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def results_dir(out: Path, environment: dict, device) -> Path:
    """``out/<device slug>``: one folder per machine kind (``x86-64``, ``nvidia-h100-80gb-hbm3``...)."""
    slug = re.sub(r"[^a-z0-9]+", "-", environment["device"].lower()).strip("-")
    return Path(out) / (slug or device.type)


def _atomic_write(path: Path, text: str) -> None:
    """Write via a temp file and rename, so an interrupted run never truncates old results."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_results(rows: list[dict], environment: dict, out_dir: Path, stem: str) -> dict[str, Path]:
    """``<stem>.json`` (environment + rows) and ``<stem>.csv`` under ``out_dir``."""
    out_dir = Path(out_dir)
    json_path, csv_path = out_dir / f"{stem}.json", out_dir / f"{stem}.csv"
    _atomic_write(json_path, json.dumps({"environment": environment, "rows": rows}, indent=2) + "\n")
    if rows:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        _atomic_write(csv_path, buffer.getvalue())
    return {"json": json_path, "csv": csv_path}


def plot_results(rows: list[dict], environment: dict, path: Path, *, title: str) -> Path | None:
    """Time and peak memory vs N per provider (one panel pair per mode). None without matplotlib."""
    plt = headless_pyplot()
    if plt is None:
        return None
    ok = [r for r in rows if r["status"] == "ok"]
    modes = sorted({r["mode"] for r in ok})
    if not modes:
        return None
    fig, axes = plt.subplots(2, len(modes), figsize=(6 * len(modes), 8), squeeze=False)
    for col, mode in enumerate(modes):
        for provider in sorted({r["provider"] for r in ok if r["mode"] == mode}):
            series = sorted((r["n"], r["median_ms"], r["peak_mem_mb"]) for r in ok
                            if r["mode"] == mode and r["provider"] == provider)
            xs = [s[0] for s in series]
            axes[0][col].plot(xs, [s[1] for s in series], marker="o", label=provider)
            axes[1][col].plot(xs, [s[2] for s in series], marker="o", label=provider)
        axes[0][col].set(title=f"{mode}: time", xlabel="tokens N", ylabel="ms (median)", xscale="log", yscale="log")
        axes[1][col].set(title=f"{mode}: peak memory above inputs", xlabel="tokens N", ylabel="MiB", xscale="log", yscale="log")
        axes[0][col].legend()
    fig.suptitle(f"{title}\n{environment['device']} - torch {environment['packages'].get('torch')} - {environment['date_utc'][:10]}")
    return save_figure(fig, path)


def save_figure(fig, path: str | Path) -> Path:
    """Lay out, write atomically as PNG (temp file + rename) and close a matplotlib figure."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    try:
        fig.savefig(tmp, dpi=110)
        tmp.replace(path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path
