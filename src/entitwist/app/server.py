"""``entitwist app``: serve the web page on this machine.

    entitwist app [-m DIR] [--host 127.0.0.1] [--port N] [--max-upload-mb N]
                  [--max-side N] [--device auto] [--allow-remote] [--auth-file FILE]

- The model: ``-m/--model DIR`` (a ``save_pretrained`` folder), else the one ``make demo``
  exports to ``demo_output/model/`` under the current directory; with neither it stops with
  one line saying how to get one (exit status 2).
- Loopback only unless ``--allow-remote`` (a host such as ``0.0.0.0`` is refused without it),
  which also requires a login (:mod:`entitwist.app.access`: ``--auth-file`` or
  ``ENTITWIST_APP_AUTH=user:password``, never a password on the command line); the server
  says in one line who can reach the page;
  no share link, no Gradio analytics, no server-side rendering (no Node), no fonts or
  scripts fetched from the internet.
- Everything the page writes (uploads, Gradio's cache, the examples, the downloads) goes to
  one temporary folder, removed when the server stops (Ctrl-C or SIGTERM). Uploads are
  limited to ``--max-upload-mb`` by Gradio and checked again by the page, images to
  ``--max-side`` pixels a side.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from entitwist.errors import CheckpointError, InputError
from entitwist.utils.cli_parser import (
    OneLineArgumentParser,
    add_device_option,
    add_model_option,
    add_precision_option,
)

__all__ = [
    "DEFAULT_MODEL",
    "build_parser",
    "check_host",
    "main",
    "resolve_model",
    "write_examples",
]

DEFAULT_MODEL = Path("demo_output") / "model"
DEFAULT_PORT = 7860


def build_parser() -> argparse.ArgumentParser:
    import inspect

    from entitwist.app.inputs import PageLimits

    limits = PageLimits()  # the page's defaults, stated there once
    examples = inspect.signature(write_examples).parameters["n"].default
    parser = OneLineArgumentParser(
        prog="entitwist app",
        description="Start the local web page: upload an image, type sentences, get masks.",
    )
    add_model_option(
        parser,
        required=False,
        default=None,
        metavar="DIR",
        help=f"a save_pretrained model folder (default: ./{DEFAULT_MODEL}, from 'make demo')",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", metavar="ADDR", help="address to listen on (loopback)"
    )
    parser.add_argument(
        "--port",
        metavar="N",
        type=int,
        default=None,
        help=f"port (default: the first free from {DEFAULT_PORT})",
    )
    parser.add_argument(
        "--max-upload-mb",
        metavar="N",
        type=float,
        default=limits.max_upload_mb,
        help=f"largest upload in MB (default {limits.max_upload_mb:g})",
    )
    parser.add_argument(
        "--max-side",
        metavar="N",
        type=int,
        default=limits.max_side,
        help=f"largest image side in pixels (default {limits.max_side})",
    )
    parser.add_argument(
        "--max-sentences",
        metavar="N",
        type=int,
        default=limits.max_sentences,
        help=f"sentences per run (default {limits.max_sentences})",
    )
    add_device_option(parser)
    add_precision_option(parser)
    parser.add_argument(
        "--entity-generator",
        help="entity maps from this generator instead of the model's own (reported)",
    )
    parser.add_argument(
        "--sam-checkpoint",
        help="segment-anything checkpoint (sam_vit_b_01ec64.pth): needed for models built "
        "for SAM entity maps",
    )
    parser.add_argument(
        "--examples",
        metavar="N",
        type=int,
        default=examples,
        help=f"synthetic example scenes to preload (default {examples})",
    )
    parser.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a non-loopback --host; the page then asks for a login (--auth-file or "
        "ENTITWIST_APP_AUTH=user:password)",
    )
    parser.add_argument(
        "--auth-file",
        metavar="FILE",
        default=None,
        help="logins for the page, one user:password per line (default: the environment "
        "variable ENTITWIST_APP_AUTH=user:password)",
    )
    return parser


def check_host(host: str, allow_remote: bool) -> None:
    """Refuse a non-loopback address unless ``allow_remote``."""
    name = host.strip().strip("[]")
    if name.lower() == "localhost":
        return
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        raise InputError(
            f"--host {host!r} is not an IP address; use 127.0.0.1 (or localhost)"
        ) from None
    if address.is_loopback:
        return
    if not allow_remote:
        raise InputError(
            f"--host {host} would expose the page beyond this machine; use the default 127.0.0.1, "
            "or add --allow-remote if you mean it"
        )


def resolve_model(model: str | None) -> Path:
    """The model folder to serve: ``model``, else ``./demo_output/model`` if it exists."""
    if model is not None:
        return Path(os.path.expanduser(model))
    if not (Path.cwd() / DEFAULT_MODEL / "config.json").is_file():
        raise CheckpointError(
            f"no model to serve: {DEFAULT_MODEL}/ does not exist here; run 'make demo' "
            "(it trains one there) or pass -m DIR (a save_pretrained folder)"
        )
    return DEFAULT_MODEL


def write_examples(folder: str | os.PathLike, n: int = 3, size: int = 256) -> list[Path]:
    """Write ``n`` synthetic scenes as ``scene_<k>.png`` with ``scene_<k>.txt`` (two sentences).

    The scenes and sentences are :func:`generate_scene` / :func:`generate_expressions` with
    fixed seeds, so the page's examples are the same on every start. They are drawn in the
    style of the demo's scenes (``entitwist.demo.cli.DEFAULTS``: object scale 2.5,
    density 0.3), which the default model (``make demo``) was trained on.
    """
    import numpy as np
    from PIL import Image

    from entitwist.data.synthetic_expressions import generate_expressions
    from entitwist.data.synthetic_scene import generate_scene

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n):
        scene = generate_scene(seed=1000 + k, size=size, object_scale=2.5, density=0.3)
        refs = generate_expressions(scene, np.random.default_rng(1000 + k), n=2)
        path = folder / f"scene_{k + 1}.png"
        Image.fromarray(scene.image).save(path)
        path.with_suffix(".txt").write_text(
            "\n".join(r.expression for r in refs) + "\n", encoding="utf-8"
        )
        paths.append(path)
    return paths


def _check_options(args: argparse.Namespace) -> None:
    if args.port is not None and not 1 <= args.port <= 65535:
        raise InputError(f"--port {args.port} is out of range; use 1..65535")
    if not args.max_upload_mb > 0:
        raise InputError(f"--max-upload-mb {args.max_upload_mb:g} must be > 0; e.g. 50")
    if args.max_side < 4:
        raise InputError(f"--max-side {args.max_side} must be at least 4 pixels; e.g. 4096")
    if args.max_sentences < 1:
        raise InputError(f"--max-sentences {args.max_sentences} must be at least 1; e.g. 8")
    if not 0 <= args.examples <= 20:
        raise InputError(f"--examples {args.examples} must be in 0..20; e.g. 3")


def _offline_environment(gradio_dir: Path) -> None:
    """Settings Gradio reads when it is imported: its cache folder, no analytics, no hub."""
    os.environ["GRADIO_TEMP_DIR"] = str(gradio_dir)
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ["GRADIO_SERVER_NAME"] = "127.0.0.1"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("DO_NOT_TRACK", "1")


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run ``entitwist app``; user errors raise :class:`EntitwistError` (exit 2 via the dispatcher)."""
    args = build_parser().parse_args(argv)
    check_host(args.host, args.allow_remote)
    _check_options(args)
    from entitwist.app.access import AUTH_ENV, reach_line, read_logins

    logins = read_logins(args.auth_file)
    if args.allow_remote and not logins:
        raise InputError(
            f"--allow-remote shares the page, so it needs a login: set {AUTH_ENV}=user:password "
            "or pass --auth-file FILE (user:password lines)"
        )
    checkpoint = resolve_model(args.model)
    from entitwist.inference.inputs import resolve_device
    from entitwist.inference.predictor import Predictor

    resolve_device(args.device)
    predictor = Predictor.from_pretrained(
        checkpoint,
        device=args.device,
        entity_generator=args.entity_generator,
        sam_checkpoint=args.sam_checkpoint,
        precision=args.precision,
    )
    if predictor.uses_entities:
        predictor.get_entity_generator()  # SAM without a checkpoint fails now, in one line
        if predictor.entity_note:
            print(f"entitwist: warning: {predictor.entity_note}", file=sys.stderr)

    from entitwist.app.page import PAGE_CSS, PageLimits, build_app

    limits = PageLimits(
        max_upload_mb=args.max_upload_mb,
        max_side=args.max_side,
        max_sentences=args.max_sentences,
    )
    with tempfile.TemporaryDirectory(prefix="entitwist-app-") as tmp:
        root = Path(tmp)
        _offline_environment(root / "gradio")
        examples_dir = root / "examples"
        write_examples(examples_dir, n=args.examples)
        if "gradio" in sys.modules:  # imported earlier: make its cache folder ours all the same
            import gradio.route_utils
            import gradio.routes

            gradio.route_utils.DEFAULT_TEMP_DIR = str(root / "gradio")
            gradio.routes.DEFAULT_TEMP_DIR = str(root / "gradio")
        import gradio as gr

        page = build_app(
            predictor,
            examples_dir,
            output_dir=root / "outputs",
            limits=limits,
            model_name=f"{predictor.model.config.name} from {checkpoint}",
        )
        theme = gr.themes.Default(
            font=["ui-sans-serif", "system-ui", "sans-serif"],  # local fonts: nothing fetched
            font_mono=["ui-monospace", "monospace"],
        )
        print(f"entitwist app: temporary files in {root} (removed when the server stops)")
        previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
        try:
            page.queue(default_concurrency_limit=1)
            page.launch(
                server_name=args.host,
                server_port=args.port,
                share=False,
                inbrowser=False,
                show_error=False,
                max_file_size=limits.max_upload_bytes,
                allowed_paths=[str(root)],
                ssr_mode=False,
                mcp_server=False,
                pwa=False,
                enable_monitoring=False,
                footer_links=[],
                theme=theme,
                css=PAGE_CSS,
                prevent_thread_lock=True,
                auth=logins or None,
                auth_message="entitwist: log in to use this page" if logins else None,
            )
            print(f"entitwist app: {reach_line(args.host, page.server_port, logins)}", flush=True)
            print("entitwist app: press Ctrl-C to stop", flush=True)
            page.block_thread()
        except KeyboardInterrupt:
            pass
        except OSError as exc:
            if "port" not in str(exc).lower():
                raise
            where = f"port {args.port} is" if args.port else "no port from 7860 to 7959 is"
            raise InputError(
                f"{where} free on {args.host}; pass another --port N (or stop what uses it)"
            ) from None
        finally:
            signal.signal(signal.SIGTERM, previous)
            page.close()
    print("entitwist app: stopped; temporary files removed", flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    from entitwist.cli import main as cli_main

    sys.exit(cli_main(["app", *sys.argv[1:]]))
