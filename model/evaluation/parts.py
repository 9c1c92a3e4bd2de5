"""The parts of an evaluation and where results go by default (no imports: the command line reads it
while it builds its parser)."""

PARTS = ("world", "niah", "mhniah", "dropout", "niah-video")
ALL = "all"  # every part (niah-video only with a data folder)
DEFAULT_OUT = "eval-results"
