"""Abstaining when unsure: the risk–coverage curve, its area (AURC) and the risk at a coverage.

A classifier that may abstain answers only for its most confident share of the images (the coverage);
the risk is its error rate on them. Ranked by a good confidence score, the risk falls as the coverage
shrinks. AURC, the mean risk over every coverage k/N (Geifman et al., 2019), sums that up in one number:
lower is better, and a score that ranks every error below every right answer reaches the minimum.

torchmetrics has no risk–coverage curve, so it is written here by hand; scores that tie (many
probabilities of exactly 1.0) count as their mean, which is the expectation over every order of the ties.
"""

import math

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat


def risk_coverage(confidence: Tensor, error: Tensor) -> tuple[Tensor, Tensor]:
    """The coverage k/N and the risk (error rate of the k most confident answers) for k = 1 ... N.

    ``confidence``: higher means surer (use ``-mutual_information`` for an uncertainty); ``error``: 1 where
    the answer is wrong. Images of equal confidence are taken in or left out together: where k splits such
    a group, each of its images counts as the group's error rate.
    """
    order = confidence.argsort(descending=True)
    confidence, error = confidence[order], error[order].double()
    # Tie groups of the sorted scores: where each ends, how many errors up to there.
    _, counts = torch.unique_consecutive(confidence, return_counts=True)
    ends = counts.cumsum(0)
    errors_at_ends = error.cumsum(0)[ends - 1]
    starts = ends - counts
    errors_before = torch.cat([errors_at_ends.new_zeros(1), errors_at_ends[:-1]])
    k = torch.arange(1, len(error) + 1, dtype=torch.double)
    group = torch.bucketize(k, ends.double())  # the tie group that the k-th answer falls in
    rate = (errors_at_ends - errors_before) / counts
    expected_errors = errors_before[group] + (k - starts[group]) * rate[group]
    return k / len(error), expected_errors / k


def aurc(confidence: Tensor, error: Tensor) -> Tensor:
    """The area under the risk–coverage curve: the mean risk over the coverages 1/N ... N/N."""
    return risk_coverage(confidence, error)[1].mean()


def risk_at_coverage(confidence: Tensor, error: Tensor, coverage: float) -> Tensor:
    """The error rate of the ``coverage`` share (0 < coverage <= 1) of most confident answers, rounded up."""
    k = max(1, math.ceil(coverage * len(error) - 1e-9))  # 0.8 * 500 must be 400, not 401
    return risk_coverage(confidence, error)[1][k - 1]


class SelectiveRisk(Metric):
    """AURC (``coverage=None``) or the risk at ``coverage`` of a test epoch; exact across batches and processes.

    ``update(confidence, error)``: every answer is kept (the curve needs the whole ranking), gathered
    across processes under DDP before the one computation at the epoch's end.
    """

    full_state_update = False
    higher_is_better = False

    def __init__(self, coverage: float | None = None) -> None:
        super().__init__()
        self.coverage = coverage
        self.add_state("confidence", default=[], dist_reduce_fx="cat")
        self.add_state("error", default=[], dist_reduce_fx="cat")

    def update(self, confidence: Tensor, error: Tensor) -> None:
        self.confidence.append(confidence.float())
        self.error.append(error.float())

    def compute(self) -> Tensor:
        confidence, error = dim_zero_cat(self.confidence), dim_zero_cat(self.error)
        value = aurc(confidence, error) if self.coverage is None else risk_at_coverage(confidence, error, self.coverage)
        return value.float()
