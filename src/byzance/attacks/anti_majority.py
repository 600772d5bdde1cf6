"""Anti-majority: the strongest attack on a majority vote of signs (signSGD with majority
vote), by omniscient, colluding Byzantine workers."""

from __future__ import annotations

import torch

from byzance.attacks.base import Attack, honest_mean
from byzance.validation import OneOf, check_param


class AntiMajority(Attack):
    """Every Byzantine worker votes, coordinate by coordinate, against the honest majority.

    Mengoli, Moll, Strozzi & El-Mhamdi, "On the Byzantine Fault Tolerance of signSGD with
    Majority Vote" (2025): omniscient workers that collude vote against what the honest
    workers decide. With ``T_j = sum_i sign(x_ij)`` the honest tally of coordinate j, the
    reference sign is ``r_j = sign(T_j)`` (``target="majority"``, default), or
    ``sign(mean_i x_ij)`` (``target="mean"``, the honest mean's sign); where it is 0 the
    honest mean's sign decides, and where that is 0 too, ``r_j = +1``. All f Byzantine vectors
    are ``-r_j * s_j`` with ``s_j = mean_i |x_ij|`` (the honest magnitude, so the vector looks
    like a gradient to other rules; the smallest positive value of the dtype where it is 0, so
    that every Byzantine worker always casts a vote).

    Against ``SignMajority`` this is the worst case: the server's tally becomes ``T_j - f r_j``,
    as far from ``r_j`` as f votes can move it, so it differs from the honest vote
    ``sign(T_j)`` exactly where ``|T_j| <= f`` (and everywhere ``T_j = 0``). No other choice of
    the f votes disagrees with the honest vote on more coordinates (tested by brute force).
    """

    name = "anti_majority"

    def __init__(self, target: str = "majority") -> None:
        self.target = check_param(type(self).__name__, "target", target, OneOf("majority", "mean"))

    def forge(self, honest: torch.Tensor, f: int) -> torch.Tensor:
        mean = honest_mean(honest)
        if self.target == "majority":
            ref = torch.nansum(torch.sign(honest), dim=0).sign()
            ref = torch.where(ref == 0, mean.sign(), ref)
        else:
            ref = mean.sign()
        ref = torch.where(ref == 0, torch.ones_like(ref), ref)
        scale = torch.nanmean(honest.abs(), dim=0)
        info = torch.finfo(honest.dtype)
        scale = torch.nan_to_num(scale, nan=info.tiny, posinf=info.max).clamp_(min=info.tiny)
        return (-ref * scale).expand(f, -1).clone()
