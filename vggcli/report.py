"""`vgg report`: Tables 3-6 from the runs, beside the paper's, every claim of Sect. 4 checked
with its noise, the settings that qualify them, and plots, as Markdown.

Every number in our columns was read from a run's manifest (evaluation errors), metrics file
(training curves) or stored posteriors (per-image correctness, for the paired tests) by the
report stage; nothing here reads a run.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from vggcli.claims import (
    MARGIN,
    SIGNIFICANCE,
    Claim,
    Expect,
    Judged,
    Score,
    Verdict,
    judge,
    p_text,
    with_error,
)
from vggcli.eval_settings import default_scales

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
# Table 6's fusions by their members, (net, stage) each: the post-submission pair of jittered
# D and E, and the ILSVRC submission's 7 (its multi-scale D fine-tuned its FC layers only).
D_AND_E = Counter({("D", "jitter"): 1, ("E", "jitter"): 1})
SUBMISSION = Counter(
    {(net, stage): 1 for net in "CDE" for stage in ("256", "384")} | {("D", "jitter-fc"): 1}
)
SUBMISSION_MODE = "dense"


Scores = dict[tuple[str, tuple[int, ...]], np.ndarray]


@dataclass(frozen=True)
class Evaluated:
    """One evaluation run's errors (and, when its posteriors were read, which images each
    method got right) and the trained model it describes."""

    net: str
    s_min: int
    s_max: int
    scales: list[int]
    errors: list[dict[str, Any]]
    model: str = ""  # the model run version's label
    num_images: int = 0
    images: str = ""  # the validation index's sha256: same images, paired tests
    correct: Scores = field(default_factory=dict)  # (method, scales) -> top-1 right per image
    fc_only: bool = False  # the model fine-tuned only its FC layers (the submission's D)
    flip: bool = True  # mirror posteriors averaged in
    crop: int = 224  # the model's training crop
    random_init: bool = False  # a deeper net (B-E) trained from random init, not A's layers

    def stage(self, roles: Roles) -> str:
        return roles.stage(self.s_min, self.s_max, self.fc_only)

    def paper_scales(self) -> bool:
        """Tested at the paper's three scales for its training scale (Sect. 4.2: S-32, S,
        S+32, or the jitter range's ends and middle; the 32 shrinks with the crop)."""
        return tuple(self.scales) == default_scales(self.s_min, self.s_max, True, self.crop)

    def train_scale(self) -> str:
        scale = str(self.s_min) if self.s_min == self.s_max else f"[{self.s_min};{self.s_max}]"
        return scale + (", FC only" if self.fc_only else "")

    def row(self, method: str, scales: list[int]) -> dict[str, Any] | None:
        return next(
            (r for r in self.errors if r["method"] == method and r["scales"] == scales), None
        )

    def score(self, method: str, scales: list[int]) -> Score | None:
        row = self.row(method, scales)
        if row is None:
            return None
        correct = self.correct.get((method, tuple(scales)))
        return Score(row["top1_err"], self.num_images, self.images, correct)


@dataclass(frozen=True)
class Roles:
    """Which of our training scales stands for which of the paper's: the smallest fixed S
    for its 256 ("256"), the next fixed S for its 384 ("384"), a jitter range for its
    [256;512] ("jitter"). Further fixed scales have no counterpart (their stage is "S=...")."""

    fixed: tuple[int, ...] = ()  # the fixed training scales evaluated, ascending
    jitter: tuple[tuple[int, int], ...] = ()  # the jitter ranges evaluated

    @staticmethod
    def of(evaluated: list[Evaluated]) -> Roles:
        fixed = sorted({e.s_min for e in evaluated if e.s_min == e.s_max})
        jitter = sorted({(e.s_min, e.s_max) for e in evaluated if e.s_min != e.s_max})
        return Roles(tuple(fixed), tuple(jitter))

    def stage(self, s_min: int, s_max: int, fc_only: bool = False) -> str:
        """The paper's name for a training scale; "jitter-fc" for an FC-only fine-tune."""
        if s_min != s_max:
            return "jitter-fc" if fc_only else "jitter"
        rank = self.fixed.index(s_min) if s_min in self.fixed else len(self.fixed)
        return ("256", "384")[rank] if rank < 2 else f"S={s_min}"

    def scale(self, stage: str) -> str:
        """Our scale in the paper's role `stage`, for sentences: "S=80", "S=[80;144]"; the
        paper's own where no run has it."""
        if stage == "jitter":
            if len(self.jitter) == 1:
                return f"S=[{self.jitter[0][0]};{self.jitter[0][1]}]"
            return "jittered S" if self.jitter else "S=[256;512]"
        rank = ("256", "384").index(stage)
        return f"S={self.fixed[rank] if rank < len(self.fixed) else stage}"

    def note(self) -> str:
        """Which of ours plays which of the paper's, when they are not the paper's."""
        ours = [
            (self.scale(s), p) for s, p in (("256", "256"), ("384", "384"), ("jitter", "[256;512]"))
        ]
        shown = [
            f"{mine} plays the paper's S={paper}" for mine, paper in ours if mine != f"S={paper}"
        ]
        return ("Training scales: " + "; ".join(shown) + ".") if shown else ""


@dataclass(frozen=True)
class Fused:
    """One fusion run: its mode, its members' evaluations, every member's errors and the
    fusion's, and which images the fusion got right."""

    mode: str
    members: list[Evaluated]
    errors: list[dict[str, Any]]
    correct: np.ndarray | None = None

    def score(self, name: str) -> Score | None:
        """The fusion's ("fusion") or a member's (by model label) top-1 error."""
        row = next((r for r in self.errors if r["name"] == name), None)
        if row is None:
            return None
        if name == "fusion":
            correct, first = self.correct, self.members[0] if self.members else None
            images, count = (first.images, first.num_images) if first else ("", 0)
            return Score(row["top1_err"], count, images, correct)
        member = next((m for m in self.members if m.model == name), None)
        if member is None:
            return Score(row["top1_err"], 0)
        found = member.score(self.mode, member.scales)
        return found or Score(row["top1_err"], member.num_images, member.images)

    def paper(self, roles: Roles) -> tuple[tuple[float, float] | None, str]:
        """The paper's Table 6 row these members match (None unless every member was tested
        at the paper's scales), and how to name the fusion."""
        members = Counter((m.net, m.stage(roles)) for m in self.members)
        paper_scales = all(m.paper_scales() for m in self.members)
        if members == D_AND_E:
            return PAPER_T6.get(self.mode) if paper_scales else None, "D & E, jittered"
        if members == SUBMISSION and self.mode == SUBMISSION_MODE:
            return PAPER_T6_SUBMISSION if paper_scales else None, "the ILSVRC submission's 7"
        return None, f"{len(self.members)} nets, no paper counterpart"


@dataclass(frozen=True)
class Curve:
    """A training run's metrics rows (JSON lines), named after the run, and what the report
    says about its setting."""

    name: str
    rows: list[dict[str, Any]]
    width: float = 1.0
    crop: int = 224
    epochs: int = 0
    finetuned: bool = False
    flip: bool = True  # random training flips
    config: dict[str, Any] = field(default_factory=dict)  # the run's training config
    init_from: str = ""  # the trained A run this net's first layers came from


# The paper's recipe (Sects. 2.1, 3.1) as a training config records it: (section of the
# config, key, the paper's value, what it is). A key a config omits has the paper's value
# (configs record these switches only when on). Widths, crops, budgets and flips have
# their own notes.
PAPER_RECIPE = (
    ("recipe", "batch_size", 256, "batch size"),
    ("recipe", "lr", 1e-2, "initial learning rate"),  # 1e-3 for fine-tunes (Sect. 3.1)
    ("recipe", "momentum", 0.9, "momentum"),
    ("recipe", "weight_decay", 5e-4, "weight decay"),
    ("recipe", "max_lr_drops", 3, "lr drops"),
    ("recipe", "final_drop", 0, "epochs at lr / 10 scheduled at the end"),
    ("recipe", "plateau_stop", False, "training ended by a plateau after the last lr drop"),
    ("recipe", "init", "normal", "random init"),
    ("recipe", "init_std", 1e-2, "init std"),
    ("recipe", "last_std", 1e-2, "init std of fc8"),  # a config's None: its init std
    ("recipe", "inserted_init", "random", "init of the layers not copied from A"),
    ("recipe", "colour_sigma", 0.1, "colour shift sigma"),
    ("recipe", "max_steps", 0, "steps at most (0: no cap)"),
    ("net", "dropout", 0.5, "dropout"),
    ("net", "input_scale", 1.0, "input scale (x mean-subtracted 0-255 pixels)"),
    ("", "precision", "fp32", "training arithmetic"),
)
FINETUNE_LR = 1e-3
INIT_KEYS = ("init", "init_std", "last_std", "inserted_init")


def departures(curve: Curve) -> list[tuple[str, str]]:
    """(what, "ours (the paper's ...)") for every recipe setting of `curve` that differs
    from the paper's, read from its config."""
    found = []
    for section, key, paper, what in PAPER_RECIPE:
        if key == "lr" and curve.finetuned:
            paper = FINETUNE_LR
        if key in INIT_KEYS and curve.finetuned or key == "init" and curve.init_from:
            continue  # fine-tunes start from weights; B-E's other layers have their own line
        where = curve.config.get(section, {}) if section else curve.config
        ours = where.get(key, paper)
        if ours is None:
            continue  # last_std unset: fc8 starts as the other layers do
        if ours != paper and not (isinstance(paper, float) and math.isclose(ours, paper)):
            found.append((what, f"{_value(ours)} (the paper's {_value(paper)})"))
    return found


def _value(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def _paper(table: dict, key: Any) -> str:
    numbers = table.get(key)
    return f"{numbers[0]:.1f} / {numbers[1]:.1f}" if numbers else "-"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _ours(row: dict[str, Any], score: Score) -> list[str]:
    """Our top-1 (± its standard error) and top-5 cells."""
    return [with_error(score) if score.num_images else _pct(row["top1_err"]), _pct(row["top5_err"])]


SCALE_HEADER = [
    "ConvNet config.",
    "train S",
    "test Q",
    "top-1 val err. (%)",
    "top-5 val err. (%)",
    "paper top-1 / top-5",
]

Keyed = dict[Any, Score]


def _scale_table(evaluated: list[Evaluated], roles: Roles, multi: bool) -> tuple[str, Keyed]:
    """Table 3 (single Q: S, or the jitter middle) or Table 4 (all evaluated scales); the
    paper's numbers in Table 4 only beside nets tested at its three scales."""
    rows, values = [], {}
    for e in evaluated:
        middle = (e.s_min + e.s_max) // 2
        scales = e.scales if multi else [middle]
        row = e.row("dense", scales) if len(e.scales) > 1 or not multi else None
        score = e.score("dense", scales)
        if row is None or score is None:
            continue
        key = (e.net, e.stage(roles))
        values[key] = score
        # Table 3's Q is S (or the jitter middle) by construction; Table 4's is a set
        paper = _paper(PAPER_T4, key) if e.paper_scales() else "-"
        paper = _paper(PAPER_T3, key) if not multi else paper
        rows.append([e.net, e.train_scale(), ",".join(map(str, scales)), *_ours(row, score), paper])
    return _table(SCALE_HEADER, rows), values


def table3(evaluated: list[Evaluated], roles: Roles) -> tuple[str, Keyed]:
    return _scale_table(evaluated, roles, multi=False)


def table4(evaluated: list[Evaluated], roles: Roles) -> tuple[str, Keyed]:
    return _scale_table(evaluated, roles, multi=True)


T5_METHODS = (("dense", "dense"), ("crop", "multi-crop"), ("dense+crop", "multi-crop & dense"))


def table5(evaluated: list[Evaluated], roles: Roles) -> tuple[str, Keyed]:
    """Evaluation methods side by side, keyed by (net, stage, method); the paper's numbers
    only beside jittered nets tested at the paper's three scales, as in its Table 5."""
    rows, values = [], {}
    for e in evaluated:
        if e.row("crop", e.scales) is None:
            continue
        stage = e.stage(roles)
        for method, label in T5_METHODS:
            row, score = e.row(method, e.scales), e.score(method, e.scales)
            if row is None or score is None:
                continue
            values[(e.net, stage, method)] = score
            as_paper = stage == "jitter" and e.paper_scales()
            paper = _paper(PAPER_T5, (e.net, method)) if as_paper else "-"
            rows.append([f"{e.net} ({e.train_scale()})", label, *_ours(row, score), paper])
    header = [
        "ConvNet config. (train S)",
        "evaluation method",
        "top-1 val err. (%)",
        "top-5 val err. (%)",
        "paper top-1 / top-5",
    ]
    return _table(header, rows), values


def table6(fused: list[Fused], roles: Roles) -> str:
    """Fusion rows, the paper's beside a fusion only when its members are the paper's."""
    rows = []
    for fusion in fused:
        paper, name = fusion.paper(roles)
        group = f"{fusion.mode}, {name}"
        for row in fusion.errors:
            is_fusion = row["name"] == "fusion"
            score = fusion.score(row["name"]) or Score(row["top1_err"], 0)
            rows.append(
                [
                    group,
                    "fusion" if is_fusion else f"member {row['name']}",
                    *_ours(row, score),
                    f"{paper[0]:.1f} / {paper[1]:.1f}" if is_fusion and paper else "",
                ]
            )
    header = ["fusion", "model", "top-1 val err. (%)", "top-5 val err. (%)", "paper top-1 / top-5"]
    return _table(header, rows)


def centre_scores(evaluated: list[Evaluated], roles: Roles) -> Keyed:
    """Single centre-crop errors by (net, stage): the paper's 5x5 comparison is on these."""
    found = {}
    for e in evaluated:
        middle = (e.s_min + e.s_max) // 2
        score = e.score("centre", [middle])
        if score is not None:
            found[(e.net, e.stage(roles))] = score
    return found


def claims(
    t3: Keyed, t4: Keyed, t5: Keyed, centre: Keyed, fused: list[Fused], roles: Roles
) -> list[Claim]:
    """Every claim of the paper's Sect. 4, each as first-vs-second on our runs."""
    return [
        *_architecture_claims(t3, centre),
        *_scale_claims(t3, t4, roles),
        *_method_claims(t5),
        *_fusion_claims(fused, roles),
    ]


ARCHITECTURE = (  # Table 3, fixed small S: (first, second, claim, expectation)
    ("A-LRN", "A", "LRN does not help: A-LRN no better than A", Expect.NOT_LOWER),
    ("B", "A", "depth: B (13 layers) beats A (11)", Expect.LOWER),
    ("C", "B", "1x1 layers help: C beats B", Expect.LOWER),
    ("D", "C", "3x3 beats 1x1 at the same depth: D beats C", Expect.LOWER),
    ("D", "A", "depth: D (16 layers) beats A (11)", Expect.LOWER),
    ("E", "D", "depth saturates: E (19 layers) no better than D (16)", Expect.NOT_LOWER),
)


DEEPER = ("B", "C", "D", "E")  # the nets the paper starts from A's layers


def random_init_name(net: str) -> str:
    return f"{net}, random init"


def random_init_apart(
    evaluated: list[Evaluated], fused: list[Fused]
) -> tuple[list[Evaluated], list[Fused]]:
    """A deeper net trained from random init, beside the same net and scales started from
    A's layers, is a row of its own ("D, random init"), in the tables and as a fusion member:
    the two are compared, not confused. Alone, it stands for its net (the paper's
    post-submission note: Glorot init, no A)."""
    from_a = {(e.net, e.s_min, e.s_max) for e in evaluated if not e.random_init}

    def apart(e: Evaluated) -> Evaluated:
        if e.random_init and (e.net, e.s_min, e.s_max) in from_a:
            return replace(e, net=random_init_name(e.net))
        return e

    fused = [replace(f, members=[apart(m) for m in f.members]) for f in fused]
    return [apart(e) for e in evaluated], fused


def _architecture_claims(t3: Keyed, centre: Keyed) -> list[Claim]:
    found = []
    for first, second, text, expect in ARCHITECTURE:
        a, b = (first, "256"), (second, "256")
        paper = (PAPER_T3[a][0], PAPER_T3[b][0])
        found.append(Claim(f"{text} (Table 3)", paper, expect, t3.get(a), t3.get(b)))
    for net in DEEPER:
        random = t3.get((random_init_name(net), "256"))
        if random is not None:
            text = f"A's layers help: {net} from A beats {net} from random init (Sect. 2.3)"
            paper = "not compared: its deeper nets start from A"
            found.append(Claim(text, paper, Expect.LOWER, t3.get((net, "256")), random))
    text = "3x3 pairs beat single 5x5 layers: B beats B-5x5 (centre crop)"
    b, shallow = centre.get(("B", "256")), centre.get(("B-5x5", "256"))
    return [*found, Claim(text, "B-5x5 7 points higher", Expect.LOWER, b, shallow)]


def _scale_claims(t3: Keyed, t4: Keyed, roles: Roles) -> list[Claim]:
    """Scale jitter vs each fixed training scale; multi-scale vs single-scale testing. The
    sentences name our scales in the paper's roles."""
    found = []
    for net in "CDE":
        for fixed in ("256", "384"):
            a, b = (net, "jitter"), (net, fixed)
            jitter, other = roles.scale("jitter"), roles.scale(fixed)
            text = f"{net}: jitter {jitter} beats fixed {other} (Table 3)"
            found.append(
                Claim(text, (PAPER_T3[a][0], PAPER_T3[b][0]), Expect.LOWER, t3.get(a), t3.get(b))
            )
    for key in PAPER_T4:
        text = f"{key[0]} ({roles.scale(key[1])}): multi-scale beats single-scale testing"
        text += " (Tables 4, 3)"
        paper = (PAPER_T4[key][0], PAPER_T3[key][0])
        found.append(Claim(text, paper, Expect.LOWER, t4.get(key), t3.get(key)))
    return found


def _method_claims(t5: Keyed) -> list[Claim]:
    """Multi-crop vs dense, and both vs the better of the two (jittered D and E)."""
    found = []
    for net in "DE":
        dense, crop, both = (t5.get((net, "jitter", m)) for m in ("dense", "crop", "dense+crop"))
        paper = (PAPER_T5[(net, "crop")][0], PAPER_T5[(net, "dense")][0])
        found.append(
            Claim(f"{net}: multi-crop beats dense (Table 5)", paper, Expect.LOWER, crop, dense)
        )
        singles = [s for s in (dense, crop) if s is not None]
        better = min(singles, key=lambda s: s.error) if len(singles) == 2 else None
        text = f"{net}: dense + multi-crop beats the better of the two (Table 5)"
        paper = (PAPER_T5[(net, "dense+crop")][0], PAPER_T5[(net, "crop")][0])
        found.append(Claim(text, paper, Expect.LOWER, both, better))
    return found


def _fusion_claims(fused: list[Fused], roles: Roles) -> list[Claim]:
    found = []
    for fusion in fused:
        members = [s for s in (fusion.score(m.model) for m in fusion.members) if s is not None]
        text = f"fusion ({fusion.mode}, {fusion.paper(roles)[1]}) beats its best member (Table 6)"
        best = min(members, key=lambda s: s.error, default=None)
        paper = _paper_fusion_gain(fusion, roles)
        found.append(Claim(text, paper, Expect.LOWER, fusion.score("fusion"), best))
    return found


def _paper_fusion_gain(fusion: Fused, roles: Roles) -> tuple[float, float] | str:
    """The paper's fusion vs its best member: D & E from Tables 6 and 5; the submission's
    members include the FC-only D, which the paper does not score alone."""
    paper, _ = fusion.paper(roles)
    if paper is None:
        return "-"
    if Counter((m.net, m.stage(roles)) for m in fusion.members) == D_AND_E:
        return paper[0], min(PAPER_T5[(net, fusion.mode)][0] for net in "DE")
    return f"{paper[0]:.1f} (7 nets)"


def claims_table(judged: list[Judged]) -> str:
    """One row per claim: the paper's errors and ours, the deciding test, its p before and
    after Holm's adjustment, the verdict (a "not shown" says what the data allow)."""
    rows = []
    for j in judged:
        claim = j.claim
        paper = (
            claim.paper
            if isinstance(claim.paper, str)
            else (f"{claim.paper[0]:.1f} vs {claim.paper[1]:.1f}")
        )
        ours = "-"
        if claim.first is not None and claim.second is not None:
            ours = f"{with_error(claim.first)} vs {with_error(claim.second)}"
        decided = j.verdict in (Verdict.HOLDS, Verdict.FAILS)
        shown = f"**{j.verdict}**" if decided else f"{j.verdict}" + (f" ({j.why})" if j.why else "")
        rows.append([claim.text, paper, ours, j.test, p_text(j.p), p_text(j.adjusted), shown])
    header = [
        "claim (first vs second)",
        "paper top-1 (%)",
        "ours top-1 (%)",
        "test",
        "p",
        "p, Holm",
        "verdict",
    ]
    return _table(header, rows)


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


def _names(items: list[str]) -> str:
    return ", ".join(items)


def setting_notes(curves: list[Curve], evaluated: list[Evaluated], roles: Roles) -> list[str]:
    """What qualifies every number above, read from the runs: images, widths, budgets,
    scales and flips."""
    notes = []
    sizes = sorted({e.num_images for e in evaluated if e.num_images})
    for size in sizes:
        notes.append(
            f"Evaluations score {size} validation images: one image is "
            f"{100 / size:.2g}% of top-1 error."
        )
    shapes: dict[str, list[str]] = {}
    for c in curves:
        shape = "full width" if c.width == 1 else f"width {c.width:g}"
        shapes.setdefault(f"{shape} on {c.crop}-px crops", []).append(c.name)
    if len(shapes) == 1:
        notes.append(f"Every net is at {next(iter(shapes))}.")
    else:
        notes += [f"At {shape}: {_names(names)}." for shape, names in shapes.items()]
    budgets: dict[tuple[bool, int], list[str]] = {}
    for c in curves:
        budgets.setdefault((c.finetuned, c.epochs), []).append(c.name)
    for (finetuned, epochs), names in sorted(budgets.items()):
        how = "fine-tuned for" if finetuned else "trained for"
        notes.append(f"{_names(names)}: {how} {epochs} epochs at most.")
    notes.append(roles.note())
    notes += _departure_notes(curves)
    for what, off in (
        ("Random flips in training", [c.name for c in curves if not c.flip]),
        ("Mirror averaging at test", [e.model for e in evaluated if not e.flip]),
    ):
        notes.append(
            f"{what}: off (`--no-flip`) for {_names(off)}."
            if off
            else f"{what}: on everywhere (the paper's)."
        )
    return [note for note in notes if note]


def _departure_notes(curves: list[Curve]) -> list[str]:
    """The recipe's departures from the paper, each with the runs it applies to, and which
    nets started from a trained A."""
    runs: dict[tuple[str, str], list[str]] = {}
    for curve in curves:
        for departure in departures(curve):
            runs.setdefault(departure, []).append(curve.name)
    notes = [
        f"{what[0].upper()}{what[1:]}: {ours} for {_every(names, curves)}."
        for (what, ours), names in runs.items()
    ]
    started = [c.name for c in curves if c.init_from]
    if started:
        notes.append(
            f"{_names(started)} started from a trained A's layers (Sect. 2.3): A's "
            "training is in them on top of their own budget, which favours them against A."
        )
    return notes


def _every(names: list[str], curves: list[Curve]) -> str:
    return "every training run" if len(names) == len(curves) else _names(names)


def write_report(
    root: Path, curves: list[Curve], evaluated: list[Evaluated], fused: list[Fused], out_dir: Path
) -> str:
    """The Markdown report for the runs under `root`; plots go beside it in `out_dir`."""
    evaluated, fused = random_init_apart(evaluated, fused)
    roles = Roles.of(evaluated)
    t3, v3 = table3(evaluated, roles)
    t4, v4 = table4(evaluated, roles)
    t5, v5 = table5(evaluated, roles)
    t6 = table6(fused, roles)
    judged = judge(claims(v3, v4, v5, centre_scores(evaluated, roles), fused, roles))
    plot_training(curves, out_dir / "training-curves.png")
    plot_scales(evaluated, out_dir / "error-vs-scale.png")
    best = min(
        (s for s in (f.score("fusion") for f in fused) if s), key=lambda s: s.error, default=None
    )
    verdicts = Counter(j.verdict for j in judged)
    parts = [
        f"# VGG reproduction report: `{root}`",
        "Every number in our columns is read from the runs under this root (evaluation "
        "manifests and posteriors, training metrics). The paper's columns are Tables 3-6 of "
        "arXiv v6 (ILSVRC-2012 validation: 50,000 images, full-size nets at S = 256 / 384 / "
        "[256;512]). Our top-1 errors carry their binomial standard error.",
        f"Best fused model: **{with_error(best)}% top-1 error**." if best is not None else "",
        "## What these runs are",
        "\n".join(f"- {note}" for note in setting_notes(curves, evaluated, roles)),
        "## Table 3: single test scale",
        t3,
        "## Table 4: multiple test scales",
        t4,
        "## Table 5: dense vs multi-crop evaluation",
        t5,
        "## Table 6: ConvNet fusion",
        t6,
        "## The paper's claims on our runs",
        "Each claim compares a first model with a second. Two models scored on the same "
        "images are compared by McNemar's exact test on the images exactly one of them gets "
        "right (wins vs losses of the first); on different images, by a two-proportion z-test. "
        "A claim that something does *not* help is tested against a margin: the first "
        f"model must be shown to be better by less than {100 * MARGIN:g} point of top-1 error "
        "(a one-sided score test, the half of an equivalence test the claim needs), or "
        "worse; significantly better, it does not hold. "
        f"All p-values are adjusted together by Holm's method; adjusted p < {SIGNIFICANCE} "
        "decides **holds** (significant in the paper's direction, or within the margin) "
        "or **does not hold** (significant the other way). Anything else is *not shown*, "
        "with the 95% interval of the difference (first minus second), which says what "
        "these images can and cannot tell.",
        claims_table(judged),
        "Verdicts: " + ", ".join(f"{verdicts[v]} {v}" for v in Verdict) + ".",
        "## Plots",
        "![training curves](training-curves.png)",
        "![error against test scale](error-vs-scale.png)",
    ]
    return "\n\n".join(p for p in parts if p) + "\n"
