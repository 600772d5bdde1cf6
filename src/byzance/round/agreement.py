r"""Model agreement among correct replicas without a trusted server: the median contraction of
ByzSGD and the averaging agreement of collaborative learning; pure functions on tensors, and
the conditions both protocols need, checked before any work.

Who hears whom (synchronous, Byzantine senders the fastest): recipient ``r`` of a phase waits
for the first ``q`` replies among the correct senders' ``s`` and the ``f`` Byzantine ones;
the Byzantine ones always arrive, and of the correct ones ``r`` hears ``q - f``: the window
``r, r+1, ..., r+q-f-1 (mod s)`` (``window``), so recipients hear different subsets (a server
or node hears itself first). Byzantine replies may differ per recipient (equivocation).

**Distributed Median Contraction** (ByzSGD, El Mhamdi, Guerraoui, Guirguis, Hoang, Rouault,
"Genuinely Distributed Byzantine Machine Learning", PODC 2020): with ``n_s`` servers of which
``f_s`` Byzantine, a worker pulling models and a correct server contracting every T steps both
take the coordinate-wise median of ``q = n_s - f_s`` replies (``median_of_replies``). With
``f_s`` Byzantine among ``n_s - f_s`` the median stays inside the correct replies' range per
coordinate when ``n_s - f_s > 2 f_s``; the paper's bound is ``n_s > 3 f_s + 1``
(``check_byzsgd``), with ``n_w > 3 f_w`` workers.

**Averaging agreement** (El Mhamdi, Farhadkhani, Guerraoui, Guirguis, Hoang, Rouault,
"Collaborative Learning in the Jungle", NeurIPS 2021): every honest node broadcasts its vector,
takes ``q = n - f`` of them and replaces its own by a robust average, for ``N`` rounds:
``"mda"``: minimum-diameter averaging of the q (discarding f), contracting when
``n >= 6f + 1``; ``"trimmed_mean"``: the coordinate-wise trimmed mean of the q (f trimmed each
side), with reliable broadcast (every honest node receives the same vector from a given
Byzantine node), when ``n >= 3f + 1``. Each round contracts the honest diameter by a constant
factor, so the number of rounds at step t grows like ``log t`` to keep the nodes' disagreement
within the step size (``agreement_rounds``: ``1 + ceil(log2 t)`` by default).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from byzance.round.batched_rules import coordinatewise, mda_indexed, median_indexed

AGREEMENTS = ("none", "mda", "trimmed_mean")


def window(recipients: int, senders: int, k: int, device: Any = None) -> torch.Tensor:
    """(recipients, k) indices: recipient r hears correct senders ``(r + j) mod senders``,
    ``j < k`` (r itself first when recipients are the senders)."""
    r = torch.arange(recipients, device=device)[:, None]
    return (r + torch.arange(k, device=device)[None, :]) % senders


def replies(
    correct: torch.Tensor, byz: torch.Tensor | None, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows, index)``: the distinct rows (the s correct vectors, then every Byzantine reply)
    and (r, k + f) indices: each recipient's ``k`` correct replies (its ``window``) then its
    ``f`` Byzantine ones (``byz`` (r, f, d); None: no Byzantine sender, r = s)."""
    s = correct.shape[0]
    if byz is None:
        return correct, window(s, s, k, correct.device)
    r, f = byz.shape[0], byz.shape[1]
    rows = torch.cat([correct, byz.reshape(r * f, -1).to(correct.dtype)])
    own = s + torch.arange(r * f, device=correct.device).reshape(r, f)
    return rows, torch.cat([window(r, s, k, correct.device), own], dim=1)


def gather_replies(correct: torch.Tensor, byz: torch.Tensor | None, k: int) -> torch.Tensor:
    """(r, k + f, d): each recipient's replies (``replies``) gathered."""
    rows, index = replies(correct, byz, k)
    return rows[index]


def median_of_replies(correct: torch.Tensor, byz: torch.Tensor | None, k: int) -> torch.Tensor:
    """(r, d): each recipient's coordinate-wise median of its k correct and f Byzantine
    replies (a worker's pull, a server's contraction), in one call for all recipients."""
    return median_indexed(*replies(correct, byz, k))


def agreement_rounds(t: int, rounds: int) -> int:
    """Rounds of averaging agreement at step ``t`` (1-based): ``rounds`` if > 0, else the
    logarithmic schedule ``1 + ceil(log2 t)``."""
    if rounds > 0:
        return rounds
    return 1 + math.ceil(math.log2(t)) if t > 1 else 1


def averaging_agreement(
    x: torch.Tensor,
    forge: Callable[[torch.Tensor], torch.Tensor] | None,
    variant: str,
    f: int,
    rounds: int,
) -> torch.Tensor:
    """``rounds`` rounds of averaging agreement from the honest vectors ``x`` (h, d).

    ``forge(current (h, d)) -> (h, f, d)``: what the f Byzantine nodes send each honest node
    this round (None: no Byzantine node). Each node takes its ``h - f`` windowed honest
    vectors and the f Byzantine ones (``q = n - f``) and applies ``variant``: ``"mda"``
    (discarding f) or ``"trimmed_mean"`` (f each side). Returns the new (h, d) vectors.
    """
    if variant not in AGREEMENTS[1:]:
        raise ValueError(
            f"averaging_agreement: variant must be mda or trimmed_mean, got {variant!r}"
        )
    from byzance.aggregators.mda import MDA
    from byzance.aggregators.median import TrimmedMean

    mda = MDA(f).aggregate

    h = x.shape[0]
    cur = x
    for _ in range(rounds):
        byz = forge(cur) if forge is not None and f > 0 else None
        rows, index = replies(cur, byz, h - f if byz is not None else h)
        if variant == "mda":
            out = mda_indexed(f, rows, index)
            cur = out if out is not None else torch.stack([mda(rows[i]) for i in index])
        else:
            cur = coordinatewise(TrimmedMean(f), rows, index)
    return cur


def diameter(x: torch.Tensor) -> float:
    """``max_{i,j} ||x_i - x_j||`` of the rows of ``x`` (0 for one row)."""
    if x.shape[0] < 2:
        return 0.0
    return float(torch.cdist(x[None].double(), x[None].double())[0].max())


# ---------------------------------------------------------------------- conditions
def check_byzsgd(cfg: Any) -> None:
    """ByzSGD's conditions (PODC 2020): ``n_servers > 3 f_servers + 1`` when ``f_servers >
    0`` (one server and no Byzantine server is the trusted server),
    ``n > 3 f`` workers; gradient attacks only (the Byzantine workers forge vectors)."""
    ns, fs = cfg.n_servers, cfg.f_servers
    if fs > 0 and ns <= 3 * fs + 1:
        raise ValueError(
            f"ExperimentConfig.n_servers: protocol byzsgd requires n_servers > 3 f_servers + 1 "
            f"(ByzSGD, PODC 2020), got n_servers={ns}, f_servers={fs}; use n_servers >= "
            f"{3 * fs + 2}"
        )
    n, f = cfg.n_honest + cfg.f, cfg.f
    if n <= 3 * f:
        raise ValueError(
            f"ExperimentConfig.f: protocol byzsgd requires n > 3f workers (ByzSGD, PODC 2020), "
            f"got n={n} (n_honest={cfg.n_honest} + f={f}), f={f}"
        )
    if cfg.has_attack:
        from byzance.attacks import DataAttack

        if isinstance(cfg.build_attack(cfg.build_aggregator()), DataAttack):
            raise ValueError(
                f"ExperimentConfig.attack: protocol byzsgd supports gradient attacks, not the "
                f"data poisoning {cfg.attack!r}"
            )
    if cfg.server_attack.split("(", 1)[0].strip() != "contraction":
        from byzance import aggregators, attacks

        try:
            attack = attacks.create(cfg.server_attack, aggregator=aggregators.create("median"))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"ExperimentConfig.server_attack: {exc}") from exc
        if not hasattr(attack, "forge"):
            raise ValueError(
                f"ExperimentConfig.server_attack: expected 'contraction' or an attack that "
                f"forges vectors (applied to models), got {cfg.server_attack!r}"
            )


def check_agreement(cfg: Any) -> None:
    """The averaging agreement's conditions (NeurIPS 2021): ``n >= 6f + 1`` for ``"mda"``,
    ``n >= 3f + 1`` for ``"trimmed_mean"``; only with protocol decentralized."""
    variant = cfg.agreement
    if variant == "none":
        return
    if cfg.protocol != "decentralized":
        raise ValueError(
            f"ExperimentConfig.agreement: {variant!r} applies to protocol decentralized only, "
            f"got protocol={cfg.protocol!r}"
        )
    n, f = cfg.n_honest + cfg.f, cfg.f
    need = 6 * f + 1 if variant == "mda" else 3 * f + 1
    if n < need:
        bound = "6f + 1" if variant == "mda" else "3f + 1"
        raise ValueError(
            f"ExperimentConfig.agreement: {variant!r} averaging agreement requires n >= {bound} "
            f"(Collaborative learning in the jungle, NeurIPS 2021), got n={n} "
            f"(n_honest={cfg.n_honest} + f={f}), f={f}"
        )
