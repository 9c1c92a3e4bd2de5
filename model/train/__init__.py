"""`flashlive train`: the VideoChat-Flash recipe in miniature, on the generated world (docs/training.md).

    from flashlive.model.train.recipe import run, export
    from flashlive.model.train.settings import TrainSettings
    run("all", TrainSettings(model="mini"), Path("runs/train"))

Importing this package is light (no torch): the config file's `train` section is validated from
`settings`, which only needs pydantic.
"""
