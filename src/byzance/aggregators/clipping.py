"""Static norm clipping, a pre-aggregator."""

from __future__ import annotations

import torch

from byzance.aggregators._distances import ExactGram
from byzance.aggregators.base import PreAggregator
from byzance.validation import Real, check_param


class Clipping(PreAggregator):
    """Static clipping: ``x_i <- x_i * min(1, c / ||x_i||_2)``, so every output has norm <= c.

    Norms are computed in the input dtype, and again in float64 for the rows where that
    overflows (huge finite vectors are clipped too). A vector with
    a NaN/inf entry has no finite clipped value and is passed on unchanged, for the following
    rule to handle as an outlier. Keeps n vectors; needs c > 0. With an exact geometry of the
    inputs (``transform_with_gram``) the norms come from it, and it is passed on (``D G D``).
    """

    name = "clipping"

    def __init__(self, c: float = 1.0) -> None:
        self.c = check_param(self, "c", c, Real(low=0, closed="neither"))

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        return self.transform_with_gram(x, None)[0]

    def transform_with_gram(
        self, x: torch.Tensor, gram: ExactGram | None
    ) -> tuple[torch.Tensor, ExactGram | None]:
        if gram is not None:
            gram.check(x.shape[0])
            norms = gram.sq_norms().clamp_min(0).sqrt().to(x.device)
        else:
            norms = torch.linalg.vector_norm(x, dim=1).double()
            overflow = torch.isinf(norms) & torch.isfinite(x).all(dim=1)
            if bool(overflow.any()):  # rare: huge finite rows, recomputed in float64
                norms[overflow] = torch.linalg.vector_norm(
                    x[overflow], dim=1, dtype=torch.float64
                )
        scale = torch.clamp(self.c / norms, max=1.0)
        scale = torch.where(torch.isfinite(norms), scale, torch.ones_like(scale))
        y = x * scale.to(x.dtype)[:, None]
        return y, (None if gram is None else gram.linear(torch.diag(scale)))
