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
from vggcli.claims import Claim, Expect, Score, Verdict, mcnemar_exact
from vggcli.report import PAPER_T5, PAPER_T6, PAPER_T6_SUBMISSION, Evaluated, Fused, table5
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


def _scores(first_right: int, second_right: int, shared: int) -> tuple[Score, Score]:
    """Two nets on the same 100 images; `shared` images right for both."""
    a = _correct(first_right)
    b = _correct(second_right, start=first_right - shared)
    return Score(1 - a.mean(), 100, "val", a), Score(1 - b.mean(), 100, "val", b)


def test_verdicts_tell_a_real_difference_from_noise() -> None:
    better, worse = _scores(80, 60, 55)  # 25 vs 5 discordant images: p < 0.001
    assert Claim("x", (1, 2), first=better, second=worse).verdict() == Verdict.HOLDS
    assert Claim("x", (1, 2), first=worse, second=better).verdict() == Verdict.FAILS
    close, other = _scores(80, 78, 70)  # 10 vs 8: noise, either way
    assert Claim("x", (1, 2), first=close, second=other).verdict() == Verdict.NOISE
    assert Claim("x", (1, 2), first=other, second=close).verdict() == Verdict.NOISE
    # "does not help" claims fail only when the first is significantly better
    lrn = {"expect": Expect.NOT_LOWER}
    assert Claim("x", (1, 2), first=close, second=other, **lrn).verdict() == Verdict.HOLDS
    assert Claim("x", (1, 2), first=worse, second=better, **lrn).verdict() == Verdict.HOLDS
    assert Claim("x", (1, 2), first=better, second=worse, **lrn).verdict() == Verdict.FAILS
    assert Claim("x", (1, 2), first=better).verdict() == Verdict.NOT_RUN
    tested = Claim("x", (1, 2), first=better, second=worse).test()
    assert tested is not None and tested[0].startswith("McNemar 25 vs 5 images")


def test_different_image_sets_are_not_paired() -> None:
    a = Score(0.2, 100, "val-1", _correct(80))
    b = Score(0.3, 100, "val-2", _correct(70))
    tested = Claim("x", (1, 2), first=a, second=b).test()
    assert tested is not None and tested[0].startswith("unpaired z")
    pooled = 0.25 * 0.75 * (2 / 100)
    assert tested[1] == pytest.approx(math.erfc(0.1 / math.sqrt(pooled) / math.sqrt(2)))


def _evaluated(net: str, s_min: int, s_max: int, methods=("dense",), **kw) -> Evaluated:
    scales = [s_min, (s_min + s_max) // 2, s_max] if s_min != s_max else [s_min]
    errors = [{"method": m, "scales": scales, "top1_err": 0.25, "top5_err": 0.1} for m in methods]
    name = f"{net}-{s_min}-{s_max}" + ("-fc" if kw.get("fc_only") else "")
    return Evaluated(net, s_min, s_max, scales, errors, model=f"{name}/v001", **kw)


def test_table5_shows_the_paper_only_beside_jittered_nets() -> None:
    methods = ("dense", "crop", "dense+crop")
    fixed, jittered = _evaluated("D", 80, 80, methods), _evaluated("D", 80, 144, methods)
    text, values = table5([jittered, fixed], small=80)
    assert {k for k in values if k[0] == "D"} == {
        ("D", stage, m) for stage in ("jitter", "256") for m in methods
    }
    paper = PAPER_T5[("D", "crop")]
    assert f"| D ([80;144]) | multi-crop | 25.0 | 10.0 | {paper[0]} / {paper[1]} |" in text
    assert "| D (80) | multi-crop | 25.0 | 10.0 | - |" in text


def _fusion(*members: Evaluated, mode: str = "dense") -> Fused:
    rows = [{"name": m.model, "top1_err": 0.3, "top5_err": 0.1} for m in members]
    return Fused(mode, list(members), rows + [{"name": "fusion", "top1_err": 0.2, "top5_err": 0.1}])


def test_table6_matches_fusions_by_their_members() -> None:
    d, e = _evaluated("D", 80, 144), _evaluated("E", 80, 144)
    assert _fusion(d, e).paper(80) == (PAPER_T6["dense"], "D & E, jittered")
    assert _fusion(d, e, mode="crop").paper(80)[0] == PAPER_T6["crop"]
    assert _fusion(d, _evaluated("E", 112, 112)).paper(80)[0] is None
    assert _fusion(d, e, _evaluated("A", 80, 80)).paper(80)[0] is None
    seven = [_evaluated(net, s, s) for net in "CDE" for s in (80, 112)]
    fc_d = _evaluated("D", 80, 144, fc_only=True)
    assert _fusion(*seven, fc_d).paper(80) == (PAPER_T6_SUBMISSION, "the ILSVRC submission's 7")
    assert _fusion(*seven, d).paper(80)[0] is None  # a fully fine-tuned D is not the paper's
    assert _fusion(*seven, fc_d, mode="crop").paper(80)[0] is None  # the submission was dense
    assert _fusion(*seven[:-1], fc_d).paper(80)[1] == "6 nets, no paper counterpart"


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
    recipe = {"epochs": epochs, **({} if flip else {"flip": False})}
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
    b = _model(root, "B", "B", (80, 80), 16, flip=False)
    _evaluation(root, a, 80, _posteriors(labels, _correct(60)), labels)
    _evaluation(root, b, 80, _posteriors(labels, _correct(90)), labels)  # 30 vs 0 images
    fc = _model(root, "D-fc", "D", (80, 144), 6, fc_only=True, finetune_from="D/v001")
    _evaluation(root, fc, 112, _posteriors(labels, _correct(75)), labels)
    report = report_stage.run(report_stage.ReportRequest(runs_root=root), tmp_path)
    text = (report.path / "report.md").read_text()
    assert "| A | 80 | 80 | 40.0 ± 4.9 | 0.0 | 29.6 / 10.4 |" in text
    claim = (
        "| depth: B (13 layers) beats A (11) (Table 3) | 28.7 vs 29.6 | 10.0 ± 3.0 vs 40.0 ± 4.9"
    )
    assert f"{claim} | McNemar 30 vs 0 images, p < 0.001 | **holds** |" in text
    assert "one image is 1% of top-1 error" in text
    assert "- B: trained for 16 epochs at most." in text
    assert "- A: trained for 35 epochs at most." in text
    assert "- D-fc: fine-tuned for 6 epochs at most." in text
    assert "| D | [80;144], FC only | 112 | 25.0 ± 4.3 | 0.0 | - |" in text  # not Table 3's D
    assert "Random flips in training: off (`--no-flip`) for B." in text
    assert "Every net is at width 0.25 on 64-px crops." in text
    assert "plays the role of the paper's 256" in text
    assert resolve("report", root).manifest()["kind"] == "report"
