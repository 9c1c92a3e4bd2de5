"""The `flashlive` subcommands, one module per command family.

Each module defines `register(subparsers, parents)`. `flashlive.cli` imports every module to build the
parser, so a module keeps heavy imports (torch, av, aiortc) inside its handlers: `flashlive memory ls`
must not load torch. Handlers turn library errors into `flashlive.errors.CommandError`.
"""
