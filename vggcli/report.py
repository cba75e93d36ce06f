"""`vgg report`: Tables 3-6 from the runs, beside the paper's, with plots, as Markdown.

Every number in our columns was read from a run's manifest (evaluation errors) or metrics
file (training curves) by the report stage; nothing is recomputed here, and nothing here
reads a run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The paper's Tables 3-6 (top-1, top-5 val error %), keyed by (net, stage); stages are the
# fixed small scale ("256"), the fixed large scale ("384") and scale jitter ("jitter").
# Transcribed from arXiv v6 via ../shared/paper/paper-spec.md section 5.3 ([EXT] there).
# fmt: off
PAPER_T3 = {("A", "256"): (29.6, 10.4), ("A-LRN", "256"): (29.7, 10.5), ("B", "256"): (28.7, 9.9),
            ("C", "256"): (28.1, 9.4), ("C", "384"): (28.1, 9.3), ("C", "jitter"): (27.3, 8.8),
            ("D", "256"): (27.0, 8.8), ("D", "384"): (26.8, 8.7), ("D", "jitter"): (25.6, 8.1),
            ("E", "256"): (27.3, 9.0), ("E", "384"): (26.9, 8.7), ("E", "jitter"): (25.5, 8.0)}
PAPER_T4 = {("B", "256"): (28.2, 9.6), ("C", "256"): (27.7, 9.2), ("C", "384"): (27.8, 9.2),
            ("C", "jitter"): (26.3, 8.2), ("D", "256"): (26.6, 8.6), ("D", "384"): (26.5, 8.6),
            ("D", "jitter"): (24.8, 7.5), ("E", "256"): (26.9, 8.7), ("E", "384"): (26.7, 8.6),
            ("E", "jitter"): (24.8, 7.5)}
PAPER_T5 = {("D", "dense"): (24.8, 7.5), ("D", "crop"): (24.6, 7.5),
            ("D", "dense+crop"): (24.4, 7.2), ("E", "dense"): (24.8, 7.5),
            ("E", "crop"): (24.6, 7.4), ("E", "dense+crop"): (24.4, 7.1)}
PAPER_T6 = {"dense": (24.0, 7.1), "crop": (23.9, 7.2), "dense+crop": (23.7, 6.8)}
PAPER_T6_SUBMISSION = (24.7, 7.5)  # 7 nets, dense
# fmt: on


@dataclass(frozen=True)
class Evaluated:
    """One evaluation run's errors and the trained model it describes."""

    net: str
    s_min: int
    s_max: int
    scales: list[int]
    errors: list[dict[str, Any]]

    def stage(self, small: int) -> str:
        if self.s_min != self.s_max:
            return "jitter"
        return "256" if self.s_min == small else "384"

    def train_scale(self) -> str:
        return str(self.s_min) if self.s_min == self.s_max else f"[{self.s_min};{self.s_max}]"

    def row(self, method: str, scales: list[int]) -> dict[str, Any] | None:
        return next(
            (r for r in self.errors if r["method"] == method and r["scales"] == scales), None
        )


@dataclass(frozen=True)
class Fused:
    """One fusion run: its mode, how many nets, every member's errors and the fusion's."""

    mode: str
    members: int
    errors: list[dict[str, Any]]


@dataclass(frozen=True)
class Curve:
    """A training run's metrics rows (JSON lines), named after the run."""

    name: str
    rows: list[dict[str, Any]]


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def _paper(table: dict, key: Any) -> str:
    numbers = table.get(key)
    return f"{numbers[0]:.1f} / {numbers[1]:.1f}" if numbers else "-"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


SCALE_HEADER = [
    "ConvNet config.",
    "train S",
    "test Q",
    "top-1 val err. (%)",
    "top-5 val err. (%)",
    "paper top-1 / top-5",
]


def _scale_table(evaluated: list[Evaluated], small: int, multi: bool) -> tuple[str, dict]:
    """Table 3 (single Q: S, or the jitter middle) or Table 4 (all evaluated scales)."""
    rows, values = [], {}
    for e in evaluated:
        middle = (e.s_min + e.s_max) // 2
        scales = e.scales if multi else [middle]
        row = e.row("dense", scales) if len(e.scales) > 1 or not multi else None
        if row is None:
            continue
        key = (e.net, e.stage(small))
        values[key] = row["top1_err"]
        paper = _paper(PAPER_T4 if multi else PAPER_T3, key)
        rows.append(
            [
                e.net,
                e.train_scale(),
                ",".join(map(str, scales)),
                _pct(row["top1_err"]),
                _pct(row["top5_err"]),
                paper,
            ]
        )
    return _table(SCALE_HEADER, rows), values


def table3(evaluated: list[Evaluated], small: int) -> tuple[str, dict]:
    return _scale_table(evaluated, small, multi=False)


def table4(evaluated: list[Evaluated], small: int) -> tuple[str, dict]:
    return _scale_table(evaluated, small, multi=True)


def table5(evaluated: list[Evaluated]) -> tuple[str, dict]:
    rows, values = [], {}
    for e in evaluated:
        for method, label in (
            ("dense", "dense"),
            ("crop", "multi-crop"),
            ("dense+crop", "multi-crop & dense"),
        ):
            row = e.row(method, e.scales)
            if row is None or e.row("crop", e.scales) is None:
                continue
            values[(e.net, method)] = row["top1_err"]
            rows.append(
                [
                    f"{e.net} ({e.train_scale()})",
                    label,
                    _pct(row["top1_err"]),
                    _pct(row["top5_err"]),
                    _paper(PAPER_T5, (e.net, method)),
                ]
            )
    header = [
        "ConvNet config. (train S)",
        "evaluation method",
        "top-1 val err. (%)",
        "top-5 val err. (%)",
        "paper top-1 / top-5",
    ]
    return _table(header, rows), values


def table6(fused: list[Fused]) -> tuple[str, dict]:
    """Fusion rows; two members compare with the paper's D & E rows, more with its
    7-net ILSVRC submission."""
    rows, values = [], {}
    for fusion in fused:
        mode, members = fusion.mode, fusion.members
        group = f"{mode}, {members} nets"
        paper = PAPER_T6.get(mode) if members == 2 else PAPER_T6_SUBMISSION
        for row in fusion.errors:
            is_fusion = row["name"] == "fusion"
            values[(group, row["name"])] = row["top1_err"]
            rows.append(
                [
                    group,
                    "fusion" if is_fusion else f"member {row['name']}",
                    _pct(row["top1_err"]),
                    _pct(row["top5_err"]),
                    f"{paper[0]:.1f} / {paper[1]:.1f}" if is_fusion and paper else "",
                ]
            )
    header = ["fusion", "model", "top-1 val err. (%)", "top-5 val err. (%)", "paper top-1 / top-5"]
    return _table(header, rows), values


def orderings(t3: dict, t4: dict, t5: dict, t6: dict) -> list[str]:
    """The paper's claims, checked on our numbers, each with an honest verdict."""
    lines = []

    def verdict(claim: str, ours: float, other: float) -> None:
        holds = "holds" if ours < other else "does **not** hold on this tiny data"
        lines.append(f"- {claim}: {_pct(ours)}% vs {_pct(other)}% top-1 error: {holds}.")

    for net in ("C", "D", "E"):
        if (net, "jitter") in t3 and (net, "256") in t3:
            verdict(
                f"{net}: scale jitter beats fixed small S (single scale)",
                t3[(net, "jitter")],
                t3[(net, "256")],
            )
    for key, multi in t4.items():
        if key in t3:
            verdict(f"{key[0]} ({key[1]}): multi-scale beats single-scale testing", multi, t3[key])
    for net in sorted({k[0] for k in t5}):
        if (net, "dense+crop") in t5:
            best = min(t5.get((net, "dense"), 1.0), t5.get((net, "crop"), 1.0))
            claim = f"{net}: dense + multi-crop beats the better of the two"
            verdict(claim, t5[(net, "dense+crop")], best)
    for mode in sorted({k[0] for k in t6}):
        members = [v for (m, name), v in t6.items() if m == mode and name != "fusion"]
        if (mode, "fusion") in t6 and members:
            verdict(f"fusion ({mode}) beats its best member", t6[(mode, "fusion")], min(members))
    return lines


def plot_training(curves: list[Curve], path: Path) -> None:
    """Validation top-1 error and training loss per epoch of every training run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_err, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
    for curve in curves:
        epochs = [r for r in curve.rows if r["kind"] == "epoch"]
        ax_err.plot(
            [r["epoch"] for r in epochs],
            [100 * r["val_top1_err"] for r in epochs],
            label=curve.name,
        )
        losses: dict[int, list[float]] = {}
        for r in curve.rows:
            if r["kind"] == "step":
                losses.setdefault(r["epoch"], []).append(r["loss"])
        ax_loss.plot(list(losses), [sum(v) / len(v) for v in losses.values()], label=curve.name)
    ax_err.set(xlabel="epoch", ylabel="val top-1 error (%)", title="validation error")
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="training loss", yscale="log")
    ax_err.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_scales(evaluated: list[Evaluated], path: Path) -> None:
    """Dense top-1 error against test scale Q, one line per evaluated model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for e in evaluated:
        points = [(q, e.row("dense", [q])) for q in e.scales]
        points = [(q, r["top1_err"]) for q, r in points if r is not None]
        if points:
            ax.plot(
                [q for q, _ in points],
                [100 * v for _, v in points],
                marker="o",
                label=f"{e.net} S={e.train_scale()}",
            )
    ax.set(
        xlabel="test scale Q", ylabel="dense top-1 val error (%)", title="error against test scale"
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(
    root: Path, curves: list[Curve], evaluated: list[Evaluated], fused: list[Fused], out_dir: Path
) -> str:
    """The Markdown report for the runs under `root`; plots go beside it in `out_dir`."""
    fixed = [e.s_min for e in evaluated if e.s_min == e.s_max]
    small = min(fixed) if fixed else 0
    t3, v3 = table3(evaluated, small)
    t4, v4 = table4(evaluated, small)
    t5, v5 = table5(evaluated)
    t6, v6 = table6(fused)
    plot_training(curves, out_dir / "training-curves.png")
    plot_scales(evaluated, out_dir / "error-vs-scale.png")
    best = min((v for (_, name), v in v6.items() if name == "fusion"), default=None)
    parts = [
        f"# VGG reproduction report: `{root}`",
        "Every number in our columns is read from the runs under this root (evaluation "
        "manifests, training metrics). The paper's columns are Tables 3-6 of arXiv v6 "
        "(ILSVRC-2012 validation, full-size nets at S = 256 / 384 / [256;512]); here the "
        f"fixed small scale S={small} plays the role of 256.",
        f"Best fused model: **{_pct(best)}% top-1 error**." if best is not None else "",
        "## Table 3: single test scale",
        t3,
        "## Table 4: multiple test scales",
        t4,
        "## Table 5: dense vs multi-crop evaluation",
        t5,
        "## Table 6: ConvNet fusion",
        t6,
        "## The paper's orderings on our runs",
        "\n".join(orderings(v3, v4, v5, v6)),
        "Where an ordering does not hold, remember the scale: 200 validation images (one "
        "image is 0.5%), nets of a quarter width trained for minutes.",
        "## Plots",
        "![training curves](training-curves.png)",
        "![error against test scale](error-vs-scale.png)",
    ]
    return "\n\n".join(p for p in parts if p) + "\n"
