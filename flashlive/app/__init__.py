"""The app layer: the glue that turns a config into running parts (ingest today; worker and serve next).

The libraries (`flashlive.model`, `.memory`, `.stream`, `.web`) know nothing of the config file or the
command line; the functions here build their settings objects and wire them together, and the commands
in `flashlive.commands` call them.
"""
