"""The autoscaler: node groups that grow from pending demand and shrink when idle, within
their bounds and the budgets, with spot nodes for preemptible work only.

:mod:`.providers` holds node groups and the provider interface, :mod:`.policy` the pure
scaling policy (the live loop and the simulator call it alike), :mod:`.runtime` the step the
scheduling loop's leader runs, :mod:`.local` the local-process provider and :mod:`.aws` the
EC2 one. See docs/autoscaling.md.
"""
