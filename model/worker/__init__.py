"""The query worker (issue 9): serves ask jobs and watch ticks from Redis on an `Engine`.

Torch-free: `service.Worker` runs against the `engine.Engine` protocol; the model side implements it.
"""
