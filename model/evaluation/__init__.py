"""The evaluation harness (issue 11): held-out worlds, NIAH and multi-hop NIAH grids, the dropout
comparison, and the paper's NIAH-Video data from a local folder. See docs/evaluation.md.

    from flashlive.model.evaluation import harness, report
    from flashlive.model.evaluation.sources import ModelSource

    source = ModelSource.load("mini")                                   # or any AnswerSource
    result = harness.run_niah(source, items=2, lengths=[1000, 3000], depths=[0, 0.5, 1])
    report.write("eval-results", result, {"model": "mini"})            # niah.json + niah.png

`flashlive eval` is the command line over it. This file imports nothing, so the command line can read
`parts` (the part names) without loading numpy or the world.
"""
