"""The smallest config the grid and database tests run (digits, logreg, 4 + 1 workers, 3
rounds): a few tenths of a second per run."""

TINY_CONFIG = {
    "dataset": "digits",
    "model": "logreg",
    "n_honest": 4,
    "f": 1,
    "rounds": 3,
    "eval_every": 1,
    "batch_size": 8,
    "attack": "sign_flipping",
    "aggregator": "average",
}
