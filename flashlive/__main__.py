from flashlive.cli import run

run()
