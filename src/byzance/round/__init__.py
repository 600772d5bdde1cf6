"""One definition of a training round, shared by every engine and protocol.

The steps (each one module): ``Setup`` builds a run's parts from a config (``setup``);
``Workers`` is the honest worker step (batch, poisoning, gradient or local steps, momentum;
``workers``); ``Adversary`` the gradient attack with its randomness and per-recipient vectors
(``adversary``); ``Server`` the server step (aggregation with the rule's explicit state, then
the optimizer; ``server``); ``metrics_record`` / ``RunResult`` what a round and a run report
(``record``). The simulator runs them for all workers at once; the Ray engine runs the worker
step in each actor and the server step on the driver; a decentralised node runs both.
"""

from byzance.round.adversary import Adversary
from byzance.round.flat_model import FlatModel
from byzance.round.record import Record, RunResult, agg_distance, metrics_record
from byzance.round.sampling import Shards
from byzance.round.server import RuleState, Server, lr_at
from byzance.round.setup import Setup
from byzance.round.workers import Workers, momentum_update

__all__ = [
    "Adversary",
    "FlatModel",
    "Record",
    "RuleState",
    "RunResult",
    "Server",
    "Setup",
    "Shards",
    "Workers",
    "agg_distance",
    "lr_at",
    "metrics_record",
    "momentum_update",
]
