"""`flashlive ask-file`: answer a question about a video file, streaming the answer."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from flashlive.errors import CommandError
from flashlive.model.device import DEVICE_RULE
from flashlive.model.settings import ModelSettings

_MODEL = ModelSettings()  # the defaults of --model and --device


def register(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "ask-file",
        parents=parents,
        help="answer a question about a video file",
        description="Decode VIDEO, sample its frames as the release's chat() does (~1 fps in whole steps, "
        "at least --min-frames, at most --max-frames), compress them and answer QUESTION.",
    )
    p.add_argument("video", metavar="VIDEO")
    p.add_argument("question", metavar="QUESTION")
    add_model_args(p)
    add_sampling_args(p)
    add_dropout_args(p)
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: 1024, as the release's chat()")
    p.add_argument("--temperature", type=float, default=None, help="0 = greedy (the default)")
    p.add_argument("--top-p", type=float, default=None, help="default: off (1)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of streaming text")
    p.set_defaults(handler=ask_file, fast_exit=True)


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=_MODEL.name, help="preset name, checkpoint directory or HF repo id")
    p.add_argument("--device", default=_MODEL.device, help=f"{DEVICE_RULE} (default {_MODEL.device})")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--download", action="store_true", help="fetch a repo id's weights if not cached")


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    from flashlive.model.sampling import CHAT_SAMPLING

    p.add_argument(
        "--max-frames", type=int, default=None, help="frame budget (default: the model's; 512 for releases)"
    )
    p.add_argument(
        "--min-frames",
        type=int,
        default=CHAT_SAMPLING.min_frames,
        help="frames taken even from short videos; wins over --max-frames "
        f"(default {CHAT_SAMPLING.min_frames})",
    )
    p.add_argument(
        "--frame-step",
        type=int,
        default=CHAT_SAMPLING.step,
        help=f"frame counts come in whole steps: {CHAT_SAMPLING.step} in chat(), 4 in training "
        f"(default {CHAT_SAMPLING.step})",
    )


def parse_sampling(args: argparse.Namespace, model_max_frames: int) -> Any:
    from flashlive.model.sampling import FrameSampling

    max_frames = args.max_frames if args.max_frames is not None else model_max_frames
    return FrameSampling(min_frames=args.min_frames, max_frames=max_frames, step=args.frame_step)


def add_dropout_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dropout",
        default=None,
        help="visual dropout mode: off, uniform, attention, uniform0_attention, uniform1_attention "
        "(default: the checkpoint's setting)",
    )
    p.add_argument(
        "--dropout-layers",
        default=None,
        help="comma-separated layers (default: 4,18 of 28 at the same depths of the model; 1,4 for mini)",
    )
    p.add_argument("--dropout-ratios", default=None, help="one more than layers (default 1,0.75,0.25)")


def parse_dropout(args: argparse.Namespace, default: Any, num_layers: int) -> Any:
    from flashlive.model.config import MODEL_CARD_DROPOUT, DropoutConfig, scale_dropout

    if args.dropout is None:
        return default
    if args.dropout == "off":
        return None
    try:
        if args.dropout_layers is None:
            layers = scale_dropout(MODEL_CARD_DROPOUT, num_layers).layers
        else:
            layers = tuple(int(v) for v in args.dropout_layers.split(",") if v.strip())
        ratios = tuple(float(v) for v in (args.dropout_ratios or "1,0.75,0.25").split(",") if v.strip())
        return DropoutConfig(args.dropout, layers, ratios)
    except ValueError as exc:
        raise CommandError(f"bad dropout settings: {exc}") from None


def check_ask_file_options(args: argparse.Namespace) -> None:
    """The numbers of ask-file through one validation path (flashlive/commands/validate.py)."""
    from flashlive.commands.validate import ASK_FILE_FLAGS, AskFileOptions, check_options

    if args.dropout in (None, "off") and (args.dropout_layers or args.dropout_ratios):
        raise CommandError(
            "--dropout-layers and --dropout-ratios need --dropout MODE (uniform, attention, ...)"
        )
    values = {name: getattr(args, name) for name in ASK_FILE_FLAGS if getattr(args, name, None) is not None}
    check_options(AskFileOptions, values, ASK_FILE_FLAGS)


def ask_file(args: argparse.Namespace) -> int:
    from flashlive.model.dropout import check_dropout
    from flashlive.model.engine import Engine
    from flashlive.model.errors import ModelError
    from flashlive.model.generation_config import RequestSampling
    from flashlive.model.pipeline import load_tower_encoder
    from flashlive.model.video import read_video
    from flashlive.model.window import VideoWindow

    check_ask_file_options(args)
    timings: dict[str, float] = {}
    try:
        t0 = time.perf_counter()
        encoder = load_tower_encoder(args.model, device=args.device, dtype=args.dtype, download=args.download)
        sampling = parse_sampling(args, encoder.cfg.max_frames)
        sampling.check(encoder.clip_frames)  # before the LLM loads: a bad number should fail fast
        engine = Engine.load(
            args.model, device=args.device, dtype=args.dtype, download=args.download, progress=True
        )
        timings["load"] = time.perf_counter() - t0
        dropout = parse_dropout(args, engine.cfg.dropout, engine.cfg.llm.num_hidden_layers)
        if dropout is not None:
            check_dropout(dropout, engine.cfg.llm.num_hidden_layers)
        params = engine.sampling(
            RequestSampling(
                max_new_tokens=args.max_new_tokens,
                temperature=args.temperature,
                top_p=args.top_p,
                seed=args.seed,
            )
        )
        t0 = time.perf_counter()
        video = read_video(args.video, clip_frames=encoder.clip_frames, sampling=sampling)
        timings["decode"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        n = len(video.frames) // encoder.clip_frames
        clips = video.frames.reshape(n, encoder.clip_frames, *video.frames.shape[1:])
        tokens = encoder.encode(clips)
        timings["encode"] = time.perf_counter() - t0
        frame_times = [i / video.fps if video.fps > 0 else 0.0 for i in video.indices]
        window = VideoWindow.from_file(
            tokens, frame_times, duration=video.duration, name=str(args.video), encoder_id=encoder.encoder_id
        )
        stream = engine.answer(window, args.question, dropout=dropout, params=params)
        for piece in stream:
            if not args.json:
                sys.stdout.write(piece)
                sys.stdout.flush()
    except (ModelError, ValueError) as exc:  # ValueError: a bad --max-frames or sampling setting
        raise CommandError(str(exc)) from None
    result = stream.result
    assert result is not None
    if args.json:
        report: dict[str, Any] = {
            "model": engine.cfg.name,
            "frames": len(video.frames),
            "sampling": vars(sampling),
            "generation": {k: v for k, v in vars(params).items() if k != "origin"},
            **result.to_dict(),
            "timings": {k: round(v, 4) for k, v in {**timings, **vars(result.timings)}.items()},
        }
        print(json.dumps(report))
    else:
        sys.stdout.write("\n")
    return 0
