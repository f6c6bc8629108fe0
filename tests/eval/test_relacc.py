"""RelAcc reproduces the paper's printed RelAcc / Avg. values from its printed scores."""

import pytest

from crop.eval.relacc import relacc, relative_scores

B5 = ["gqa", "mme", "textvqa", "scienceqa", "pope"]
B6 = ["gqa", "mme", "textvqa", "scienceqa", "vqav2", "pope"]

PAPER_ROWS = [
    # (benchmarks, baseline row, method row, printed RelAcc)        source
    (B5, [61.9, 1862, 58.2, 69.5, 85.9], [58.7, 1735, 56.8, 69.2, 85.4], 96.9),    # Table 5 prune 192
    (B5, [61.9, 1862, 58.2, 69.5, 85.9], [59.6, 1675, 54.9, 71.5, 83.6], 96.2),    # Table 5 ILP 64
    (B5, [61.58, 2269, 83.92, 84.34, 88.35], [55.50, 2251, 79.90, 78.90, 82.99], 94.4),  # Table 7 FastV 50%
    (B5, [61.58, 2269, 83.92, 84.34, 88.35], [59.85, 2013, 80.34, 82.60, 87.86], 95.8),  # Table 7 ILP 22.2%
    (B5, [61.94, 1862, 58.20, 69.54, 85.93], [61.96, 1866, 58.18, 70.95, 85.93], 100.5),  # Table 8 K=32
    (B6, [61.9, 1862, 58.2, 69.5, 78.5, 85.9], [61.3, 1817, 57.4, 69.2, 77.7, 85.3], 98.9),  # Table 2 7B ILP 192
    (B6, [61.9, 1862, 58.2, 69.5, 78.5, 85.9], [60.3, 1634, 55.2, 71.8, 75.0, 80.2], 95.4),  # Table 2 7B PLC 64
]


@pytest.mark.parametrize("benches, base, row, printed", PAPER_ROWS)
def test_relacc_matches_paper(benches, base, row, printed):
    value = relacc(dict(zip(benches, row)), dict(zip(benches, base)))
    # the printed inputs are rounded themselves (61.3 may be 61.34): allow 0.1 point
    assert abs(value - printed) <= 0.1


def test_missing_benchmark_is_left_out():
    # Table 2, LLaVA-1.5-13B SparseVLM at 192 tokens: VQAv2 is "-", printed 92.1%
    base = dict(zip(B6, [63.2, 1818, 61.3, 72.8, 80.0, 85.9]))
    row = dict(zip(B6, [58.7, 1768, 45.4, 73.1, None, 82.2]))
    assert round(relacc(row, base), 1) == 92.1
    assert set(relative_scores(row, base)) == set(B6) - {"vqav2"}


def test_restricting_benchmarks_and_errors():
    base = {"gqa": 50.0, "mme": 2000.0}
    row = {"gqa": 25.0, "mme": 2000.0}
    assert relacc(row, base) == pytest.approx(75.0)         # (0.5 + 1.0) / 2
    assert relacc(row, base, ["mme"]) == pytest.approx(100.0)
    assert relacc({"pope": 1.0}, base) is None
    with pytest.raises(ValueError, match="baseline score of gqa is 0"):
        relacc(row, {"gqa": 0.0})


def test_benchmarks_left_out_are_never_divided():
    """`crop table --benchmarks pope`: a zero baseline on another benchmark must not matter."""
    from crop.eval.relacc import relacc

    assert relacc({"gqa": 0.0, "pope": 60.0}, {"gqa": 0.0, "pope": 80.0}, ["pope"]) == 75.0
    with pytest.raises(ValueError, match="baseline score of gqa is 0"):
        relacc({"gqa": 0.0, "pope": 60.0}, {"gqa": 0.0, "pope": 80.0})
