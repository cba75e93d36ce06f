"""The report's arithmetic and matching: McNemar's exact test, verdicts, standard errors,
Table 5 by stage and Table 6 by members, on hand-made evaluations; and the report stage on
hand-written runs (manifests and posteriors) so its numbers are the files'."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from vggcli.artifacts import Kind
from vggcli.claims import (
    SIGNIFICANCE,
    Claim,
    Difference,
    Expect,
    Score,
    Verdict,
    holm,
    judge,
    mcnemar_exact,
)
from vggcli.eval_settings import default_scales
from vggcli.report import (
    PAPER_T5,
    PAPER_T6,
    PAPER_T6_SUBMISSION,
    Evaluated,
    Fused,
    Roles,
    claims,
    random_init_apart,
    table3,
    table4,
    table5,
)
from vggcli.runs import RunWriter, resolve
from vggcli.stages import report as report_stage


def _correct(right: int, total: int = 100, start: int = 0) -> np.ndarray:
    """`right` images right, a contiguous block from `start`."""
    flags = np.zeros(total, dtype=bool)
    flags[start : start + right] = True
    return flags


def test_mcnemar_exact_matches_the_binomial_tail_by_hand() -> None:
    first = np.array([True] * 13 + [False] * 2 + [True] * 5)
    second = np.array([False] * 13 + [True] * 2 + [True] * 5)  # 5 agreements carry nothing
    wins, losses, p = mcnemar_exact(first, second)
    assert (wins, losses) == (13, 2)
    assert p == pytest.approx(2 * (1 + 15 + 105) / 2**15)  # 2 * P(X <= 2), X ~ B(15, 1/2)
    assert mcnemar_exact(first, first)[2] == 1.0
    assert mcnemar_exact(second, first)[:2] == (2, 13)
    assert mcnemar_exact(np.ones(4, bool), np.zeros(4, bool))[2] == 0.125  # 2 / 2**4


def test_standard_error_is_binomial() -> None:
    assert Score(0.2, 400).standard_error == pytest.approx(math.sqrt(0.2 * 0.8 / 400))


def _scores(first_right: int, second_right: int, shared: int, total: int = 100):
    """Two nets on the same `total` images; `shared` images right for both."""
    a = _correct(first_right, total)
    b = _correct(second_right, total, start=first_right - shared)
    return Score(1 - a.mean(), total, "val", a), Score(1 - b.mean(), total, "val", b)


def _verdict(first: Score, second: Score, expect: Expect = Expect.LOWER) -> Verdict:
    return judge([Claim("x", (1, 2), expect, first, second)])[0].verdict


def test_verdicts_have_three_outcomes_in_both_directions() -> None:
    better, worse = _scores(80, 60, 55)  # 25 vs 5 discordant images: p < 0.001
    close, other = _scores(80, 78, 70)  # 10 vs 8: noise, either way
    assert _verdict(better, worse) == Verdict.HOLDS
    assert _verdict(worse, better) == Verdict.FAILS
    assert _verdict(close, other) == Verdict.NOT_SHOWN
    assert _verdict(other, close) == Verdict.NOT_SHOWN
    assert _verdict(better, None) == Verdict.NOT_RUN  # type: ignore[arg-type]
    # "does not help": a failure to find a difference on 100 images shows nothing ...
    no_better = Expect.NOT_LOWER
    assert _verdict(close, other, no_better) == Verdict.NOT_SHOWN
    assert _verdict(better, worse, no_better) == Verdict.FAILS
    assert _verdict(worse, better, no_better) == Verdict.HOLDS  # significantly worse: no better
    # ... while 10,000 images with 100 vs 100 discordant bound it inside half a point
    same, twin = _scores(9000, 9000, 8900, total=10_000)
    assert _verdict(same, twin, no_better) == Verdict.HOLDS
    # and a real gain smaller than the margin is still a gain: the claim does not hold
    slightly, baseline = _scores(9050, 9000, 8950, total=10_000)  # 100 vs 50 images
    assert _verdict(slightly, baseline, no_better) == Verdict.FAILS


def test_not_shown_says_what_the_images_allow() -> None:
    close, other = _scores(80, 78, 70)  # first minus second: -2 points
    judged = judge([Claim("x", (1, 2), Expect.LOWER, close, other)])[0]
    diff = Difference.of(close, other)
    assert diff is not None and diff.value == pytest.approx(-0.02)
    # paired standard error from the 10 vs 8 discordant images: sqrt(18 - 2**2 / 100) / 100
    assert diff.standard_error == pytest.approx(math.sqrt(18 - 0.04) / 100)
    assert judged.why.startswith("difference -2.0 points, 95% CI -10.3 to +6.3")
    twins = judge([Claim("x", (1, 2), Expect.LOWER, close, close)])[0]
    assert twins.verdict == Verdict.NOT_SHOWN and twins.why == "both get the same images right"


def _tail(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2))


def test_the_paired_margin_test_takes_its_variance_at_the_margin() -> None:
    """Tango's score test against a likelihood maximised by brute force: the rate of images
    only the first gets right, q, with q - margin for those only the second gets right."""
    wins, losses, n, margin = 2, 5, 100, 0.01
    q = np.linspace(margin + 1e-9, (1 + margin) / 2 - 1e-9, 2_000_001)
    concordant = n - wins - losses
    likelihood = (
        losses * np.log(q - margin) + wins * np.log(q) + concordant * np.log(1 - 2 * q + margin)
    )
    rate = q[np.argmax(likelihood)]
    z = ((losses - wins) / n + margin) / math.sqrt((2 * rate - margin - margin**2) / n)
    diff = Difference((losses - wins) / n, 0.0, 1.0, "x", counts=(wins, losses, n))
    assert diff.p_not_better_by(margin) == pytest.approx(_tail(z), rel=1e-4)
    # two nets that agree on all 200 images: z = sqrt(n margin / (1 - margin)), not infinite
    same = Difference(0.0, 0.0, 1.0, "x", counts=(0, 0, 200))
    assert same.p_not_better_by(0.005) == pytest.approx(_tail(math.sqrt(200 * 0.005 / 0.995)))
    assert same.p_not_better_by(0.005) > 0.1  # 200 images cannot show half a point
    # one image apart shows nothing either (the observed variance would say p < 0.001)
    assert Difference(0.005, 0.0, 1.0, "x", counts=(0, 1, 200)).p_not_better_by(0.005) > 0.05


def test_the_unpaired_margin_test_is_agresti_caffo() -> None:
    a, b = Score(0.2, 100), Score(0.3, 100)
    diff = Difference.of(a, b)
    assert diff is not None
    first, second = 21 / 102, 31 / 102  # one image right and one wrong added to each
    spread = math.sqrt(first * (1 - first) / 102 + second * (1 - second) / 102)
    assert diff.p_not_better_by(0.005) == pytest.approx(_tail((first - second + 0.005) / spread))
    zero = Difference.of(Score(0.0, 10), Score(0.0, 10))  # no variance observed at all
    assert zero is not None and 0.3 < zero.p_not_better_by(0.005) < 0.5


def test_holm_adjusts_step_down_and_keeps_order() -> None:
    adjusted = holm([0.01, 0.04, 0.03, 0.2])
    # sorted 0.01, 0.03, 0.04, 0.2 -> x4, x3, x2, x1 = 0.04, 0.09, 0.08, 0.2; the third is
    # raised to the second's 0.09 (never below an adjusted p before it)
    assert adjusted == pytest.approx([0.04, 0.09, 0.09, 0.2])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])


def test_holm_turns_a_lone_chance_finding_into_not_shown() -> None:
    borderline = _scores(80, 72, 68)  # 12 vs 4 discordant images: p = 0.077
    lone = _scores(80, 70, 67)  # 13 vs 3: p = 0.021, significant alone; four tests: x4
    assert _verdict(*lone) == Verdict.HOLDS
    many = [Claim(str(i), (1, 2), Expect.LOWER, *lone) for i in range(3)]
    judged = judge(many + [Claim("b", (1, 2), Expect.LOWER, *borderline)])
    assert judged[0].p == pytest.approx(mcnemar_exact(lone[0].correct, lone[1].correct)[2])
    assert judged[0].adjusted > SIGNIFICANCE
    assert [j.verdict for j in judged] == [Verdict.NOT_SHOWN] * 4


def test_different_image_sets_are_not_paired() -> None:
    a = Score(0.2, 100, "val-1", _correct(80))
    b = Score(0.3, 100, "val-2", _correct(70))
    diff = Difference.of(a, b)
    assert diff is not None and diff.method == "unpaired z"
    pooled = 0.25 * 0.75 * (2 / 100)
    assert diff.p == pytest.approx(math.erfc(0.1 / math.sqrt(pooled) / math.sqrt(2)))
    assert diff.standard_error == pytest.approx(math.sqrt(0.2 * 0.8 / 100 + 0.3 * 0.7 / 100))


def _evaluated(net: str, s_min: int, s_max: int, methods=("dense",), scales=None, **kw):
    """A model trained on 64-px crops, tested at the paper's three scales unless `scales`."""
    scales = list(scales or default_scales(s_min, s_max, True, 64))
    rows = [{"method": m, "scales": scales, "top1_err": 0.25, "top5_err": 0.1} for m in methods]
    rows += [{"method": "dense", "scales": [q], "top1_err": 0.3, "top5_err": 0.1} for q in scales]
    name = f"{net}-{s_min}-{s_max}" + ("-fc" if kw.get("fc_only") else "")
    return Evaluated(net, s_min, s_max, scales, rows, model=f"{name}/v001", crop=64, **kw)


ROLES = Roles((80, 112), ((80, 144),))


def test_roles_name_our_scales_by_the_papers() -> None:
    roles = Roles.of([_evaluated("D", s, s) for s in (112, 80, 160)] + [_evaluated("D", 80, 144)])
    assert roles == Roles((80, 112, 160), ((80, 144),))
    assert [roles.stage(s, s) for s in (80, 112, 160)] == ["256", "384", "S=160"]
    assert roles.stage(80, 144) == "jitter" and roles.stage(80, 144, fc_only=True) == "jitter-fc"
    assert [roles.scale(s) for s in ("256", "384", "jitter")] == ["S=80", "S=112", "S=[80;144]"]
    assert Roles((256,)).scale("384") == "S=384"  # not run: the paper's own
    assert Roles((256, 384), ((256, 512),)).note() == ""


def test_a_deeper_net_from_random_init_is_its_own_row_beside_the_same_net_from_a() -> None:
    from_a, random = _evaluated("D", 80, 80), _evaluated("D", 80, 80, random_init=True)
    random.errors[0]["top1_err"] = random.errors[-2]["top1_err"] = 0.6
    fusion = Fused("dense", [from_a, random], [])
    apart, (fused,) = random_init_apart([_evaluated("A", 80, 80), from_a, random], [fusion])
    assert [e.net for e in apart] == ["A", "D", "D, random init"]
    assert [m.net for m in fused.members] == ["D", "D, random init"]
    _, t3 = table3(apart, ROLES)
    found = {c.text: c for c in claims(t3, {}, {}, {}, [], ROLES)}
    claim = found["A's layers help: D from A beats D from random init (Sect. 2.3)"]
    assert (claim.first.error, claim.second.error) == (0.3, 0.6)
    assert not any("B from A" in text for text in found)  # no random-init B: no claim
    alone, _ = random_init_apart([_evaluated("A", 80, 80), random], [])  # Glorot D: it is D
    assert [e.net for e in alone] == ["A", "D"]


def test_table5_shows_the_paper_only_beside_jittered_nets_at_its_scales() -> None:
    methods = ("dense", "crop", "dense+crop")
    fixed, jittered = _evaluated("D", 80, 80, methods), _evaluated("D", 80, 144, methods)
    other_q = _evaluated("E", 80, 144, methods, scales=(96, 112, 128))
    text, values = table5([jittered, fixed, other_q], ROLES)
    assert {k for k in values if k[0] == "D"} == {
        ("D", stage, m) for stage in ("jitter", "256") for m in methods
    }
    paper = PAPER_T5[("D", "crop")]
    assert f"| D ([80;144]) | multi-crop | 25.0 | 10.0 | {paper[0]} / {paper[1]} |" in text
    assert "| D (80) | multi-crop | 25.0 | 10.0 | - |" in text
    assert "| E ([80;144]) | multi-crop | 25.0 | 10.0 | - |" in text
    text, _ = table4([jittered, other_q], ROLES)
    assert "| D | [80;144] | 80,112,144 | 25.0 | 10.0 | 24.8 / 7.5 |" in text
    assert "| E | [80;144] | 96,112,128 | 25.0 | 10.0 | - |" in text


def _fusion(*members: Evaluated, mode: str = "dense") -> Fused:
    rows = [{"name": m.model, "top1_err": 0.3, "top5_err": 0.1} for m in members]
    return Fused(mode, list(members), rows + [{"name": "fusion", "top1_err": 0.2, "top5_err": 0.1}])


def test_table6_matches_fusions_by_their_members() -> None:
    d, e = _evaluated("D", 80, 144), _evaluated("E", 80, 144)
    assert _fusion(d, e).paper(ROLES) == (PAPER_T6["dense"], "D & E, jittered")
    assert _fusion(d, e, mode="crop").paper(ROLES)[0] == PAPER_T6["crop"]
    assert _fusion(d, _evaluated("E", 112, 112)).paper(ROLES)[0] is None
    assert _fusion(d, e, _evaluated("A", 80, 80)).paper(ROLES)[0] is None
    seven = [_evaluated(net, s, s) for net in "CDE" for s in (80, 112)]
    fc_d = _evaluated("D", 80, 144, fc_only=True)
    assert _fusion(*seven, fc_d).paper(ROLES) == (PAPER_T6_SUBMISSION, "the ILSVRC submission's 7")
    assert _fusion(*seven, d).paper(ROLES)[0] is None  # a fully fine-tuned D is not the paper's
    assert _fusion(*seven, fc_d, mode="crop").paper(ROLES)[0] is None  # the submission was dense
    assert _fusion(*seven[:-1], fc_d).paper(ROLES)[1] == "6 nets, no paper counterpart"
    e_other_q = _evaluated("E", 80, 144, scales=(96, 112, 128))
    assert _fusion(d, e_other_q).paper(ROLES) == (None, "D & E, jittered")


# --- the report stage on hand-written runs -----------------------------------------------


def _run(root: Path, name: str, kind: Kind, config: dict, parents=(), results=None, files=None):
    with RunWriter.open(root, name, kind=kind, config=config, parents=list(parents)) as writer:
        for file_name, array in (files or {}).items():
            with writer.writing(file_name) as tmp, open(tmp, "wb") as fh:
                if isinstance(array, str):
                    fh.write(array.encode())
                else:
                    np.save(fh, array)
        for key, value in (results or {}).items():
            writer.set_result(key, value)
    return writer.version


def _model(root: Path, name: str, net: str, s: tuple[int, int], epochs: int, flip=True, **extra):
    recipe = {"epochs": epochs, **({} if flip else {"flip": False}), **extra.pop("recipe", {})}
    config = {
        "net": {"net": net, "width": 0.25, "crop": 64},
        "s_min": s[0],
        "s_max": s[1],
        "recipe": recipe,
        "dataset": "data/v001",
        **extra,
    }
    row = {"kind": "epoch", "epoch": 0, "val_top1_err": 0.5}
    metrics = json.dumps(row) + "\n"
    return _run(root, name, Kind.MODEL, config, files={"model.pt": "w", "metrics.jsonl": metrics})


def _evaluation(root: Path, model, scale: int, probs: np.ndarray, labels: np.ndarray):
    wrong = np.argmax(probs, 1) != labels
    rows = [
        {
            "name": "dense",
            "method": "dense",
            "scales": [scale],
            "top1_err": wrong.mean(),
            "top5_err": 0.0,
        }
    ]
    results = {"errors": rows, "num_images": len(labels), "val_index_sha256": "val"}
    config = {"model": model.label, "mode": "dense", "scales": [scale]}
    files = {"dense.npy": probs, "labels.npy": labels}
    return _run(root, f"{model.name}-eval", Kind.EVALUATION, config, [model], results, files)


def _posteriors(labels: np.ndarray, right: np.ndarray) -> np.ndarray:
    probs = np.full((len(labels), 4), 0.1, dtype=np.float32)
    probs[np.arange(len(labels)), np.where(right, labels, (labels + 1) % 4)] = 0.7
    return probs


def test_report_stage_reads_per_image_scores_from_the_stored_posteriors(tmp_path) -> None:
    root = tmp_path / "runs"
    labels = np.arange(100) % 4
    a = _model(root, "A", "A", (80, 80), 35)
    b = _model(
        root,
        "B",
        "B",
        (80, 80),
        16,
        False,
        recipe={"batch_size": 16},
        init_from="A/v001",
        precision="bf16",
    )
    _evaluation(root, a, 80, _posteriors(labels, _correct(60)), labels)
    _evaluation(root, b, 80, _posteriors(labels, _correct(90)), labels)  # 30 vs 0 images
    fc = _model(
        root,
        "D-fc",
        "D",
        (80, 144),
        6,
        recipe={"init": "kaiming"},
        fc_only=True,
        finetune_from="D/v001",
    )
    _evaluation(root, fc, 112, _posteriors(labels, _correct(75)), labels)
    report = report_stage.run(report_stage.ReportRequest(runs_root=root), tmp_path)
    text = (report.path / "report.md").read_text()
    assert "| A | 80 | 80 | 40.0 ± 4.9 | 0.0 | 29.6 / 10.4 |" in text
    claim = (
        "| depth: B (13 layers) beats A (11) (Table 3) | 28.7 vs 29.6 | 10.0 ± 3.0 vs 40.0 ± 4.9"
    )
    assert f"{claim} | McNemar 30 vs 0 images | < 0.001 | < 0.001 | **holds** |" in text
    assert "one image is 1% of top-1 error" in text
    assert "- B: trained for 16 epochs at most." in text
    assert "- A: trained for 35 epochs at most." in text
    assert "- D-fc: fine-tuned for 6 epochs at most." in text
    assert "| D | [80;144], FC only | 112 | 25.0 ± 4.3 | 0.0 | - |" in text  # not Table 3's D
    assert "Random flips in training: off (`--no-flip`) for B." in text
    assert "Every net is at width 0.25 on 64-px crops." in text
    roles = "S=80 plays the paper's S=256; S=[80;144] plays the paper's S=[256;512]."
    assert f"- Training scales: {roles}" in text
    assert "- Batch size: 16 (the paper's 256) for B." in text
    assert "- Training arithmetic: bf16 (the paper's fp32) for B." in text
    assert "- B started from a trained A's layers" in text
    assert "Initial learning rate" not in text  # D-fc's default is the paper's 1e-3
    assert "Random init" not in text  # a fine-tune starts from weights: its init is moot
    assert "Verdicts: 1 holds, 0 does not hold, 0 not shown, " in text
    assert resolve("report", root).manifest()["kind"] == "report"
