r"""Decentralised Byzantine-resilient SGD on Ray: no trusted server, one model per honest node.

Following El-Mhamdi, Farhadkhani, Guerraoui, Guirguis, Hoang, Rouault, "Collaborative Learning
in the Jungle (Decentralized, Byzantine, Heterogeneous, Asynchronous and Nonconvex Learning)",
NeurIPS 2021, and ByzSGD (El-Mhamdi, Guerraoui, Guirguis, Hoang, Rouault, "Genuinely
Distributed Byzantine Machine Learning", PODC 2020): ``n = h + f`` nodes on a complete graph,
the ``h`` honest ones each hold a model :math:`\theta_i` (all start from the same
:math:`\theta_0`) and a momentum :math:`m_i`. Round ``t`` at honest node ``i``:

1. local momentum on its own model and shard:
   :math:`m_i \leftarrow \beta m_i + (1 - \beta) g_i(\theta_i)`;
2. gradient exchange: ``i`` broadcasts :math:`m_i` and aggregates **its own vector first**,
   then the other honest nodes' vectors (by node id) and the Byzantine ones:
   :math:`\hat g_i = F([m_i, m_{j \ne i}, b_{1 \to i}, \dots, b_{f \to i}])` with the
   configured rule ``F`` (``ExperimentConfig.aggregator``, built with ``f``; e.g. MoNNA,
   whose reference is row 0 = the node's own vector, or ``nnm+trimmed_mean``);
3. local step: :math:`\theta_i^{+} = \theta_i - \gamma_t (\hat g_i + \lambda \theta_i)`
   (lr schedule :math:`\gamma_t`, weight decay :math:`\lambda`);
4. model exchange (the contraction step of ByzSGD / averaging agreement of the jungle paper):
   :math:`\theta_i \leftarrow F_{\mathrm{model}}([\theta_i^{+}, \theta_{j \ne i}^{+},
   b'_{1 \to i}, \dots])` with ``model_aggregator`` (default coordinate-wise trimmed mean).

Byzantine nodes are omniscient and may **equivocate** (send different vectors to different
peers): each forges :math:`a_k` = row ``k`` of ``attack(honest vectors, f)`` and, with
``equivocate=True``, sends node ``i`` the vector :math:`v_i + (a_k - \bar v)`, the attack's
deviation re-anchored at ``i``'s own vector :math:`v_i` (so it looks close to each recipient);
without equivocation every peer gets :math:`a_k`. A node whose vector of a phase does not
arrive within ``round_timeout`` is left out of that round (its model unchanged), recorded in
``missing_workers``; each rule is checked on the smallest number of vectors a node may
aggregate, ``q = n - f``, before anything runs.

Checkpoints: with ``RayOptions.checkpoint_dir``, every ``checkpoint_every`` rounds (and at the
last round) every node's state (honest: :math:`\theta_i`, momentum, its rules' state; Byzantine:
the attack and its RNG), the history and the missing nodes since the last record are saved
atomically as ``<checkpoint_dir>/<run id>.ckpt`` (the run id covers the config and the
``DecentralizedOptions``). Started again with a checkpoint there (and ``RayOptions.resume``),
the run goes on after the checkpointed round, and the results DB's records are rewritten up
to it; the rest of the run is the one an uninterrupted run would have done.

Metrics: ``test_accuracy`` is the mean over honest nodes (``test_accuracy_min`` / ``_max``
too) and ``spread`` the honest models' diameter :math:`\max_{i,j} \|\theta_i - \theta_j\|`.
With ``attack="none"`` and averaging for both rules, all models stay equal and the run is the
simulator's (centralised) SGD with worker momentum.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from byzance.engines.ray_engine import (
    QuorumError,
    RayOptions,
    WorkerActor,
    _open_db,
    check_resources,
    checkpoint_path,
    connect,
    load_checkpoint_file,
    log,
    save_checkpoint_file,
    start_db_run,
)


@dataclass
class DecentralizedOptions:
    """``model_aggregator``: rule for the model exchange (built with ``f``); ``equivocate``:
    Byzantine nodes tailor their vectors to each recipient."""

    model_aggregator: str = "trimmed_mean"
    equivocate: bool = True


class NodeCore:
    """An honest node: its worker core (shard, momentum), its model and its two rules."""

    def __init__(
        self,
        worker: Any,
        node: int,
        theta: torch.Tensor,
        grad_rule: Any,
        model_rule: Any,
        lr: tuple[str, float, int],
        weight_decay: float,
    ) -> None:
        self.worker = worker
        self.node = node
        self.theta = theta.clone()
        self.grad_rule = grad_rule
        self.model_rule = model_rule
        self.lr = lr
        self.weight_decay = weight_decay
        self.m: np.ndarray | None = None
        self.loss = float("nan")

    def warmup(self) -> None:
        getattr(self.worker, "warmup", lambda: None)()

    def compute(self, params: np.ndarray, round_: int) -> tuple[np.ndarray, float]:
        """Phase 1: momentum at the node's own model (``params`` ignored)."""
        self.m, self.loss = self.worker.compute(self.theta.numpy(), round_)
        return self.m, self.loss

    @staticmethod
    def _gather(own: np.ndarray, pos: int, k: int, vectors: tuple[np.ndarray, ...]) -> torch.Tensor:
        rows = [own, *vectors[:k]] + [b[pos] for b in vectors[k:]]
        return torch.from_numpy(np.stack(rows))

    def gradient_step(self, round_: int, pos: int, k: int, *vectors: np.ndarray) -> np.ndarray:
        """Phase 2-3: aggregate own momentum + ``k`` honest + Byzantine rows ``pos``; step."""
        from byzance.sim.server import lr_at

        assert self.m is not None
        g = self.grad_rule.aggregate(self._gather(self.m, pos, k, vectors))
        if self.weight_decay:
            g = g + self.weight_decay * self.theta
        self.theta = self.theta - lr_at(self.lr[0], self.lr[1], round_, self.lr[2]) * g
        return self.theta.numpy()

    def model_step(self, round_: int, pos: int, k: int, *vectors: np.ndarray) -> np.ndarray:
        """Phase 4: aggregate own model + ``k`` honest + Byzantine rows ``pos``."""
        self.theta = self.model_rule.aggregate(self._gather(self.theta.numpy(), pos, k, vectors))
        return self.theta.numpy()

    def params(self) -> np.ndarray:
        return self.theta.numpy()

    def state_dict(self) -> dict[str, Any]:
        """Model, worker core state (momentum), and copies of both rules (whatever state they
        keep, e.g. bucketing's permutation generator or centered clipping's centre)."""
        return {
            "theta": self.theta.clone(),
            "worker": self.worker.state_dict(),
            "rules": copy.deepcopy((self.grad_rule, self.model_rule)),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.theta = state["theta"].clone()
        self.worker.load_state_dict(state["worker"])
        if "rules" in state:
            self.grad_rule, self.model_rule = copy.deepcopy(state["rules"])


class EquivocatingForger:
    """A Byzantine node: for recipients in order, ``anchor_i + (a_k - mean)`` (see module)."""

    def __init__(self, forger: Any, equivocate: bool) -> None:
        self.forger = forger
        self.equivocate = equivocate

    def forge(self, honest: np.ndarray, round_: int) -> np.ndarray:
        a = self.forger.forge(honest, round_)
        if not self.equivocate:
            return np.broadcast_to(a, honest.shape).copy()
        return honest + (a - honest.mean(axis=0))[None, :]

    def state_dict(self) -> dict[str, Any]:
        return self.forger.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.forger.load_state_dict(state)


class NodeActor(WorkerActor):
    """Actor body of a decentralised node (adds the exchange phases to ``WorkerActor``)."""

    def gradient_step(self, round_: int, pos: int, k: int, *vectors: Any) -> np.ndarray:
        self._apply_faults(round_)
        return self.core.gradient_step(round_, pos, k, *self._unwrap(vectors))

    def model_step(self, round_: int, pos: int, k: int, *vectors: Any) -> np.ndarray:
        return self.core.model_step(round_, pos, k, *self._unwrap(vectors))

    def forge_for(self, round_: int, *honest: Any) -> np.ndarray:
        return self.core.forge(np.stack(self._unwrap(honest)), round_)

    def params(self) -> np.ndarray:
        return self.core.params()

    @staticmethod
    def _unwrap(vectors: tuple[Any, ...]) -> tuple[np.ndarray, ...]:
        return tuple(v[0] if isinstance(v, tuple) else v for v in vectors)


def run_decentralized_ray(
    config: Any,
    *,
    address: str | None = None,
    options: RayOptions | None = None,
    decentralized: DecentralizedOptions | None = None,
    on_metrics: Callable[[dict[str, Any]], None] | None = None,
    db: Any = None,
    before_round: Callable[[list[Any], int], None] | None = None,
) -> dict[str, Any]:
    """Run ``config`` decentralised on Ray; return ``{"history", "params" (h, d), "seconds"}``.

    ``config`` is an ``ExperimentConfig`` (``aggregator`` is each node's gradient rule;
    ``server_momentum`` must be 0). Recorded in ``db`` with ``engine="ray-decentralized"``.
    With ``options.checkpoint_dir`` it checkpoints every ``options.checkpoint_every`` rounds
    and resumes from a checkpoint of the same run found there (see the module docstring).
    ``before_round(actors, t)``: a hook for tests (fault injection).
    """
    import ray

    from byzance import aggregators
    from byzance.engines.sim_workload import SimForger, SimWorkerCore
    from byzance.results import run_id
    from byzance.sim.config import ExperimentConfig
    from byzance.sim.simulation import Simulation

    if isinstance(config, dict):
        config = ExperimentConfig.from_dict(config)
    options = dataclasses.replace(options or RayOptions())
    dec = decentralized or DecentralizedOptions()
    if address is not None:
        options.address = address
    options.validate()
    config.validate()
    if config.server_momentum:
        raise ValueError("decentralized mode: server_momentum must be 0 (there is no server)")
    h, f = config.n_honest, (config.f if config.has_attack else 0)
    n = h + f
    q = n - config.f if options.quorum is None else options.quorum
    grad_rule = config.build_aggregator()
    try:
        model_rule = aggregators.create(dec.model_aggregator, f=config.f)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"DecentralizedOptions.model_aggregator: {exc}") from exc
    for label, rule in (("aggregator", grad_rule), ("model_aggregator", model_rule)):
        try:
            rule.check(q)
        except ValueError as exc:
            raise ValueError(
                f"decentralized mode: the {label} cannot run on the q={q} vectors a node may "
                f"aggregate (n={n} nodes, f={config.f}): {exc}"
            ) from exc
    if config.has_attack and not hasattr(config.build_attack(grad_rule), "forge"):
        raise ValueError(
            f"decentralized mode supports gradient attacks (with forge), not {config.attack!r}"
        )
    started = connect(options)
    actors: list[Any] = []
    database, owned = _open_db(db)
    rid = run_id({**config.to_dict(), "decentralized": dataclasses.asdict(dec)}, "ray")
    start = time.perf_counter()
    try:
        check_resources(n, options)
        sim = Simulation(config)
        theta0 = sim.params.detach().cpu().clone()
        lr = (config.lr_schedule, config.lr, config.rounds)
        cores: list[Any] = [
            NodeCore(
                SimWorkerCore(sim, i), i, theta0, grad_rule, model_rule, lr, config.weight_decay
            )
            for i in range(h)
        ]
        cores += [
            EquivocatingForger(SimForger(sim.attack, j, f, config.seed), dec.equivocate)
            for j in range(f)
        ]
        opts: dict[str, Any] = {"num_cpus": options.worker_cpus, "max_restarts": 0}
        if options.worker_resources:
            opts["resources"] = dict(options.worker_resources)
        if options.spread:
            opts["scheduling_strategy"] = "SPREAD"
        cls = ray.remote(NodeActor).options(**opts)
        actors = [cls.remote(c, i, options.torch_threads) for i, c in enumerate(cores)]
        ready, pending = ray.wait(
            [a.info.remote() for a in actors], num_returns=n, timeout=options.startup_timeout
        )
        if pending:
            raise ValueError(
                f"{len(pending)} of {n} node actors did not start within "
                f"{options.startup_timeout:g} s (RayOptions.startup_timeout)"
            )
        history: list[dict[str, Any]] = []
        since: list[dict[str, Any]] = []
        first, elapsed = 1, 0.0
        resumed = load_checkpoint_file(options, rid)
        if resumed is not None:
            ray.get([actors[i].set_state.remote(s) for i, s in resumed["nodes"].items() if i < n])
            history = list(resumed["history"])
            since = list(resumed["missing_since"])
            first, elapsed = int(resumed["round"]) + 1, float(resumed["elapsed"])
            log.warning("resumed run %s from its checkpoint at round %d", rid, resumed["round"])
        if database is not None:
            start_db_run(database, config.to_dict(), "ray-decentralized", rid, history)
        t_start = time.perf_counter() - elapsed  # ``time`` goes on from the checkpoint's
        honest_ids = list(range(h))
        byz = actors[h:]
        for t in range(first, config.rounds + 1):
            if before_round is not None:
                before_round(actors, t)
            missing: dict[int, str] = {}

            def phase(
                calls: dict[int, Any], label: str, t: int = t, missing: dict[int, str] = missing
            ) -> dict[int, Any]:
                ready, _ = ray.wait(
                    list(calls.values()), num_returns=len(calls), timeout=options.round_timeout
                )
                got: dict[int, Any] = {}
                ready_set = set(ready)
                for i, ref in calls.items():
                    if ref not in ready_set:
                        missing.setdefault(i, f"timeout ({label})")
                        continue
                    try:
                        ray.get(ref)
                    except Exception as exc:  # noqa: BLE001 - a faulty node, not the run
                        log.warning("round %d: node %d failed in %s: %s", t, i, label, exc)
                        missing.setdefault(i, f"error ({label})")
                        continue
                    got[i] = ref
                return got

            m_refs = phase({i: actors[i].compute.remote(None, t) for i in honest_ids}, "momentum")
            ids = sorted(m_refs)
            round_losses = [ray.get(m_refs[i])[1] for i in ids]
            if len(ids) + f < q:
                raise QuorumError(
                    f"round {t}: {len(ids)} honest nodes answered, q={q}, f={f}; missing: {missing}"
                )
            b_refs = [b.forge_for.remote(t, *[m_refs[i] for i in ids]) for b in byz]
            p_refs = phase(
                {
                    i: actors[i].gradient_step.remote(
                        t, pos, len(ids) - 1, *[m_refs[j] for j in ids if j != i], *b_refs
                    )
                    for pos, i in enumerate(ids)
                },
                "gradient",
            )
            ids = sorted(p_refs)
            bm_refs = [b.forge_for.remote(t, *[p_refs[i] for i in ids]) for b in byz]
            phase(
                {
                    i: actors[i].model_step.remote(
                        t, pos, len(ids) - 1, *[p_refs[j] for j in ids if j != i], *bm_refs
                    )
                    for pos, i in enumerate(ids)
                },
                "model",
            )
            for w, reason in sorted(missing.items()):
                since.append({"round": t, "worker": w, "reason": reason})
            if t % config.eval_every == 0 or t == config.rounds:
                thetas = torch.from_numpy(
                    np.stack(ray.get([actors[i].params.remote() for i in honest_ids]))
                )
                accs = [
                    sim.evaluate(th) if bool(torch.isfinite(th).all()) else 1.0 / sim.num_classes
                    for th in thetas
                ]
                spread = float(torch.cdist(thetas[None], thetas[None])[0].max())
                record = {
                    "round": t,
                    "train_loss": float(np.mean(round_losses)) if round_losses else math.nan,
                    "test_accuracy": float(np.mean(accs)),
                    "test_accuracy_min": float(np.min(accs)),
                    "test_accuracy_max": float(np.max(accs)),
                    "spread": spread,
                    "agg_distance": float("nan"),
                    "lr": sim.server.lr_at(t),
                    "time": time.perf_counter() - t_start,
                    "missing_workers": since,
                }
                since = []
                history.append(record)
                if database is not None:
                    database.record_metrics(rid, record)
                if on_metrics is not None:
                    on_metrics(record)
            every = options.checkpoint_every
            if every and (t % every == 0 or t == config.rounds):
                elapsed = time.perf_counter() - t_start
                path = checkpoint_path(options, rid)
                _save_checkpoint(path, actors, options.round_timeout, t, history, since, elapsed)
        thetas = torch.from_numpy(
            np.stack(ray.get([actors[i].params.remote() for i in honest_ids]))
        )
        seconds = time.perf_counter() - start
        if database is not None:
            database.finish_run(rid, history[-1]["test_accuracy"], seconds)
        return {"history": history, "params": thetas, "seconds": seconds, "run_id": rid}
    except BaseException as exc:
        if database is not None and database.status(rid) == "running":
            database.fail_run(rid, f"{type(exc).__name__}: {exc}".splitlines()[0])
        raise
    finally:
        for a in actors:
            try:
                ray.kill(a, no_restart=True)
            except Exception:  # noqa: BLE001 - already dead
                pass
        if owned:
            database.close()
        if started and ray.is_initialized():
            ray.shutdown()


def _save_checkpoint(
    path: Any,
    actors: list[Any],
    timeout: float,
    round_: int,
    history: list[dict[str, Any]],
    since: list[dict[str, Any]],
    elapsed: float,
) -> None:
    """Every node's state (a node that does not answer within ``timeout`` is left out and
    keeps its initial state on resume), the history and the missing nodes since the last
    record, written atomically to ``path``."""
    import ray

    refs = {i: a.get_state.remote() for i, a in enumerate(actors)}
    ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout)
    ready_set = set(ready)
    nodes: dict[int, Any] = {}
    for i, ref in refs.items():
        if ref not in ready_set:
            log.warning("round %d: node %d left out of the checkpoint (no answer)", round_, i)
            continue
        try:
            nodes[i] = ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - a dead node, not the run
            log.warning("round %d: node %d left out of the checkpoint: %s", round_, i, exc)
    state = {
        "round": round_,
        "nodes": nodes,
        "history": history,
        "missing_since": since,
        "elapsed": elapsed,
    }
    save_checkpoint_file(path, state)
