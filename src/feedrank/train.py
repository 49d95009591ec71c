"""``python -m feedrank.train``: the training worker entrypoint that torchrun launches.

Same options as ``feedrank train`` (it is that command); under torchrun every worker
joins the process group from the environment and trains its shard of the data:

    torchrun --standalone --nproc_per_node 2 -m feedrank.train --data var/world --out var/model
    python -m feedrank.train --data var/world --out var/model        # one process
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> None:
    import faulthandler
    import signal

    from feedrank.cli.train import train

    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 PID` prints a hung worker's stacks to stderr

    train.main(args=argv, prog_name="python -m feedrank.train")


if __name__ == "__main__":
    main()
