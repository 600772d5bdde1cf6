"""Cross-device federated learning: a population of clients, a uniform sample per round.

A population (``ExperimentConfig.n_clients`` = N) holds B Byzantine clients
(``byzantine_clients``: a count, or a fraction of N rounded to the nearest count, ties to
even); clients ``0..N-B-1`` are honest, ``N-B..N-1`` Byzantine. Each round t the server samples
S = ``clients_per_round`` clients uniformly without replacement (``"all"``: every client),
from a generator keyed by (seed, t) only, so round t's sample is the same however the run
got there. The number K_t of Byzantine clients in the sample is then hypergeometric:
``P(K = k) = C(B, k) C(N - B, S - k) / C(N, S)``, independent across rounds.

The aggregator's f (``aggregator_f``) is ``f`` as given or, with
``f_exceed_probability = p``, the smallest f' >= f such that ``P(K > f') <= p``: the
(1 - p)-quantile of the exact hypergeometric law (computed from its pmf in log space, no
approximation), floored at ``f``. A round with K_t > aggregator_f is outside what the rule
is built to tolerate; the simulator records K_t every round and counts these rounds.

With ``attack = "none"`` the Byzantine clients are absent (as the f workers are without a
population): the S clients are sampled among the N - B honest ones.

Client state: a client's shard (its examples' indices) exists for every client; its momentum
only once it has been sampled (``ClientMomenta``: a row allocated at its first round, zero
before), so unsampled clients cost memory, never compute. Worker momentum under partial
participation (``ClientMomenta.update``): a sampled client updates
``m <- beta m + (1 - beta) g`` from the momentum it left at its last round; an unsampled
client's momentum is frozen (not decayed, not reset) until it is sampled again, as the local
momenta of Otsuka, Takezawa, Yamada (2025, "Delayed momentum aggregation: communication-
efficient Byzantine-robust federated learning with partial participation"), whose server also
reuses the cached momenta of absent clients, which we do not: the server aggregates the S
vectors of the round only. The momentum of a client sampled after a long absence is thus
stale (computed at old parameters): with a small sample rate (S / N) worker momentum mostly
mixes a client's rare visits, and ``momentum = 0`` (stateless clients, the usual
cross-device assumption of Kairouz et al. 2021) is the alternative.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

#: the stream tag of the round's sample (keeps it apart from any other generator keyed by
#: the seed and the round)
_SAMPLE_STREAM = 0x5A3D1E


def byzantine_count(n_clients: int, byzantine: int | float) -> int:
    """B: a count as given, or a fraction of ``n_clients`` rounded to the nearest count."""
    if isinstance(byzantine, float):
        return int(round(byzantine * n_clients))
    return int(byzantine)


def hypergeom_pmf(n: int, b: int, s: int) -> np.ndarray:
    """``P(K = k)`` for k = 0..min(s, b): K Byzantine among s drawn without replacement from
    n clients of which b are Byzantine (float64, from log-binomials)."""
    ks = np.arange(0, min(s, b) + 1)
    lo = max(0, s - (n - b))

    def log_comb(a: int, k: np.ndarray | int) -> np.ndarray:
        k = np.asarray(k, dtype=np.float64)
        return math.lgamma(a + 1) - _lgamma(k + 1) - _lgamma(a - k + 1)

    pmf = np.zeros(ks.size)
    valid = ks >= lo
    kv = ks[valid]
    logp = log_comb(b, kv) + log_comb(n - b, s - kv) - float(log_comb(n, s))
    pmf[valid] = np.exp(logp)
    return pmf / pmf.sum()  # exact up to round-off; renormalised against its drift


def _lgamma(x: np.ndarray) -> np.ndarray:
    return np.vectorize(math.lgamma, otypes=[np.float64])(x)


def exceed_probability(n: int, b: int, s: int, f: int) -> float:
    """``P(K > f)`` for the hypergeometric count K of ``hypergeom_pmf(n, b, s)``."""
    pmf = hypergeom_pmf(n, b, s)
    return float(pmf[f + 1 :].sum()) if f + 1 < pmf.size else 0.0


def f_for_probability(n: int, b: int, s: int, p: float, floor: int = 0) -> int:
    """The smallest f >= ``floor`` with ``P(K > f) <= p`` (K as in ``hypergeom_pmf``)."""
    pmf = hypergeom_pmf(n, b, s)
    tail = np.cumsum(pmf[::-1])[::-1]  # tail[k] = P(K >= k), summed from the small end
    for f in range(floor, pmf.size):
        if f + 1 >= pmf.size or tail[f + 1] <= p:
            return f
    return max(floor, pmf.size - 1)


@dataclass(frozen=True)
class Population:
    """The resolved sizes of a config's population (``Population.of(config)``)."""

    n_clients: int
    byzantine: int
    per_round: int
    aggregator_f: int
    #: the sample is drawn among the honest clients only (attack "none")
    honest_only: bool

    @property
    def honest(self) -> int:
        return self.n_clients - self.byzantine

    @classmethod
    def of(cls, config: Any) -> Population:
        """From an ``ExperimentConfig`` with ``n_clients`` set (checked: ``check_population``)."""
        n = int(config.n_clients)
        b = byzantine_count(n, config.byzantine_clients)
        honest_only = _no_attack(config.attack)
        pool = n - b if honest_only else n
        s = pool if config.clients_per_round == "all" else int(config.clients_per_round)
        f = int(config.f)
        p = config.f_exceed_probability
        if p is not None and not honest_only:
            f = f_for_probability(n, b, s, p, floor=f)
        return cls(n, b, s, f, honest_only)

    def exceed_probability(self) -> float:
        """``P(K_t > aggregator_f)`` in one round."""
        if self.honest_only:
            return 0.0
        return exceed_probability(self.n_clients, self.byzantine, self.per_round, self.aggregator_f)


def _no_attack(spec: str) -> bool:
    """Whether an attack spec names no attack (``"none"``, any case, any parameters)."""
    return str(spec).split("(", 1)[0].strip().lower().replace("-", "_") == "none"


def check_population(config: Any) -> None:
    """The conditions between the population's fields (before any work); ``ValueError``
    naming the field, the condition and the values."""
    name = "ExperimentConfig"
    if config.n_clients is None:
        unused = {
            "byzantine_clients": (config.byzantine_clients, 0),
            "clients_per_round": (config.clients_per_round, "all"),
            "f_exceed_probability": (config.f_exceed_probability, None),
            "min_client_examples": (config.min_client_examples, DEFAULT_MIN_EXAMPLES),
        }
        for field, (value, default) in unused.items():
            if value != default:
                raise ValueError(
                    f"{name}.{field}: only used with a client population (n_clients), got "
                    f"{field}={value!r} with n_clients=None; set n_clients or leave {field} "
                    f"at {default!r}"
                )
        return
    n = config.n_clients
    if config.protocol != "server":
        raise ValueError(
            f"{name}.n_clients: client sampling runs under protocol 'server' only, got "
            f"protocol={config.protocol!r} with n_clients={n}"
        )
    if config.n_honest != DEFAULT_N_HONEST:
        raise ValueError(
            f"{name}.n_honest: not used with a client population (the honest clients are "
            f"n_clients - byzantine_clients), got n_honest={config.n_honest} with n_clients={n}; "
            f"leave n_honest at {DEFAULT_N_HONEST}"
        )
    b = byzantine_count(n, config.byzantine_clients)
    if b >= n:
        raise ValueError(
            f"{name}.byzantine_clients: expected fewer than n_clients={n} Byzantine clients, "
            f"got byzantine_clients={config.byzantine_clients!r} ({b} clients)"
        )
    pop = Population.of(config)
    pool = pop.honest if pop.honest_only else n
    if config.clients_per_round != "all" and pop.per_round > pool:
        where = f"the {pool} honest clients (attack='none')" if pop.honest_only else f"{n}"
        raise ValueError(
            f"{name}.clients_per_round: expected at most {where}, got "
            f"clients_per_round={config.clients_per_round}"
        )


def check_population_data(config: Any, num_train: int, n_val: int, dataset: str) -> None:
    """Every client gets at least ``min_client_examples`` training examples (after the
    validation split): ``n_clients * min_client_examples <= num_train - n_val``."""
    n, m, left = config.n_clients, config.min_client_examples, num_train - n_val
    if n * m > left:
        raise ValueError(
            f"ExperimentConfig.n_clients: dataset {dataset!r} has {left} training examples "
            f"(after holding out {n_val} for validation), too few for n_clients={n} clients of "
            f"at least min_client_examples={m} each; use at most {left // m} clients or a "
            f"smaller min_client_examples"
        )


DEFAULT_N_HONEST = 10
DEFAULT_MIN_EXAMPLES = 3


class ClientSampler:
    """The clients of round t: ``sample(t) -> (honest ids, Byzantine ids)``, each sorted.

    Drawn with numpy's ``Generator.choice`` without replacement from a generator seeded by
    ``SeedSequence([seed, t, tag])``: reproducible, and round t's sample does not depend on
    the earlier rounds.
    """

    def __init__(self, population: Population, seed: int) -> None:
        self.population, self.seed = population, seed

    def sample(self, round_: int) -> tuple[np.ndarray, np.ndarray]:
        pop = self.population
        pool = pop.honest if pop.honest_only else pop.n_clients
        seq = np.random.SeedSequence([self.seed, round_, _SAMPLE_STREAM])
        rng = np.random.Generator(np.random.PCG64(seq))
        if pop.per_round == pool:
            ids = np.arange(pool, dtype=np.int64)
        else:
            ids = np.sort(rng.choice(pool, size=pop.per_round, replace=False)).astype(np.int64)
        k = int(np.searchsorted(ids, pop.honest))
        return ids[:k], ids[k:]


class ClientMomenta:
    """Worker momenta of a population, stored for the clients sampled at least once.

    ``slot[c]`` is client c's row in ``table`` (-1: never sampled, momentum 0, no memory);
    rows are allocated at a client's first round (``table`` grows by doubling), so the
    memory is ``4 d`` bytes (float32) per client ever sampled and a round touches only its
    sampled rows (see the module docstring for the rule).
    """

    def __init__(self, n_clients: int, dim: int, beta: float, device: torch.device) -> None:
        self.beta, self.dim, self.device = beta, dim, device
        self.slot = torch.full((n_clients,), -1, dtype=torch.int64)
        self.table = torch.zeros(0, dim, device=device)
        self.used = 0

    @property
    def clients_stored(self) -> int:
        return self.used

    def nbytes(self) -> int:
        """Bytes held for the momenta (the allocated table) and the slot index."""
        return self.table.numel() * self.table.element_size() + self.slot.numel() * 8

    def _slots(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows of ``ids`` in ``table``, mask of the clients seen for the first time), new
        rows allocated (uninitialised: a first round writes the whole row)."""
        slots = self.slot[ids]
        new = slots < 0
        n_new = int(new.sum())
        if n_new:
            need = self.used + n_new
            if need > self.table.shape[0]:  # grow by doubling: amortised O(1) per client
                cap = max(need, 2 * self.table.shape[0], 16)
                grown = self.table.new_empty(cap, self.dim)
                grown[: self.used] = self.table[: self.used]
                self.table = grown
            fresh = torch.arange(self.used, need, dtype=torch.int64)
            self.slot[ids[new]] = fresh
            slots[new] = fresh
            self.used = need
        return slots, new

    def update(self, ids: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """``m_c <- beta m_c + (1 - beta) g_c`` for the clients ``ids`` (rows of ``g``),
        stored and returned (k, d); a client's first round gives ``(1 - beta) g_c`` (m_0 = 0,
        the same float operation as ``Workers.momentum``); ``beta = 0``: ``g`` itself,
        nothing stored."""
        if self.beta == 0.0:
            return g
        if self.table.dtype != g.dtype:
            self.table = self.table.to(g.dtype)
        slots, new = self._slots(ids.cpu())
        slots = slots.to(self.device)
        w = 1.0 - self.beta
        if not bool(new.any()):  # all seen before: from their stored momenta
            m = self.table[slots].lerp_(g, w)
        else:
            m = torch.mul(g, w)  # every row as a first round, then the others
            if not bool(new.all()):
                old = (~new).nonzero().flatten().to(self.device)
                m[old] = self.table[slots[old]].lerp_(g[old], w)
        self.table[slots] = m
        return m
