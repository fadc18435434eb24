"""``make demo``: start zspa-serve with the built-in demo model (a small LLaVA-1.5 trained
only on synthetic scenes of coloured shapes, with token dropout), ask it held-out
questions unpruned and at keep_rate 0.25 and 0.1, print the answers next to the expected
ones, tally each setting over more held-out questions, then draw with zspa-show which
patches one of the questions kept.

    python scripts/demo.py [--keep-running] [--questions 6] [--tally 200] [--no-picture]
    python scripts/demo.py --server http://HOST:PORT [--api-key KEY]   # a running zspa-serve --demo
"""

from __future__ import annotations

import argparse
import base64
import io
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from openai import OpenAI

from zspa_eval.report import wilson
from zspa_serve.launch import ServerProcess
from zspa_demo.scenes import HELD_OUT_START, draw, example

SETTINGS = [("unpruned", {}), ("keep 0.25", {"keep_rate": 0.25}), ("keep 0.1", {"keep_rate": 0.1})]
FIRST_SEED = HELD_OUT_START + 5000  # held-out scenes (not in the accuracy table's slice either)
COLUMN = 16


def data_url(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def ask(client: OpenAI, model: str, image_url: str, question: str, **knobs):
    content = [{"type": "image_url", "image_url": {"url": image_url}}, {"type": "text", "text": question}]
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": content}],
                                          max_tokens=8, temperature=0, extra_body=knobs or None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep-running", action="store_true", help="leave the server running at the end")
    parser.add_argument("--questions", type=int, default=6)
    parser.add_argument("--tally", type=int, default=200, help="held-out questions each setting is scored on "
                        "after the table (0: none)")
    parser.add_argument("--no-picture", action="store_true", help="skip the zspa-show picture")
    parser.add_argument("--server", help="ask this running zspa-serve --demo instead of starting one")
    parser.add_argument("--api-key", default="none", help="the --server's API key, if it has one")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="zspa-demo-"))
    server = None
    if args.server is None:
        log = workdir / "server.log"
        print(f"starting zspa-serve --demo (log: {log}) ...", flush=True)
        server = ServerProcess(["--demo"], log)
    try:
        if server is None:
            base_url = args.server.rstrip("/")
        else:
            seconds = server.wait_healthy(progress=lambda s: print(f"\r  waiting for /health: {s:4.0f} s", end="", flush=True))
            base_url = server.base_url
            print(f"\rserver healthy after {seconds:.0f} s at {base_url}          ")
        client = OpenAI(base_url=f"{base_url}/v1", api_key=args.api_key)
        shown = ask_all(client, args.questions)
        if args.tally:
            tally(client, args.tally, first_seed=FIRST_SEED + args.questions)
        if server is not None and args.keep_running:
            print(f"server left running at {base_url} (pid {server.proc.pid})")
            return 0
    except Exception as error:  # show the server's side of the story
        tail = server.log_tail() if server is not None else "(not started here)"
        print(f"\ndemo failed: {error}\n--- server log tail ---\n{tail}", file=sys.stderr)
        if server is not None:
            server.stop()
        return 1
    if server is not None:
        server.stop()
    if args.no_picture or shown is None:
        return 0
    return picture(*shown, workdir)


def ask_all(client: OpenAI, questions: int):
    """Print each held-out question, its expected answer and the answers per setting (with
    the visual tokens kept), then how many each setting got right; returns (image,
    question) of the first non-yes/no question, for the picture."""
    model = client.models.list().data[0].id
    print(f"model: {model} (trained only on synthetic shapes)\n")
    header = f"{'question':<32} {'expected':<8} " + " ".join(f"{name:<{COLUMN}}" for name, _ in SETTINGS)
    print(header + "\n" + "-" * len(header))
    shown, right = None, [0] * len(SETTINGS)
    for seed in range(FIRST_SEED, FIRST_SEED + questions):
        scene, question, answer, _ = example(seed)
        image = draw(scene)
        answers = []
        for i, (_, knobs) in enumerate(SETTINGS):
            response = ask(client, model, data_url(image), question, **knobs)
            text = response.choices[0].message.content.strip()
            right[i] += text == answer
            answers.append(f"{text} ({response.usage.model_dump()['visual_tokens_kept']})")
        print(f"{question:<32} {answer:<8} " + " ".join(f"{a:<{COLUMN}}" for a in answers))
        if shown is None and answer not in ("yes", "no"):
            shown = (image, question)
    print(f"{'right':<41} " + " ".join(f"{f'{r} of {questions}':<{COLUMN}}" for r in right))
    print("\n(in brackets: visual tokens kept of 144 per image)")
    return shown


def tally(client: OpenAI, count: int, first_seed: int) -> None:
    """Each setting's share right on ``count`` more held-out questions, with its 95%
    interval (Wilson), asked 8 at a time."""
    model = client.models.list().data[0].id
    examples = [example(seed) for seed in range(first_seed, first_seed + count)]
    urls = [data_url(draw(scene)) for scene, *_ in examples]

    def right(job) -> bool:
        (_, question, answer, _), url, knobs = job
        return ask(client, model, url, question, **knobs).choices[0].message.content.strip() == answer

    print(f"\nscored on {count} more held-out questions (95% interval):")
    with ThreadPoolExecutor(8) as pool:
        for name, knobs in SETTINGS:
            hits = sum(pool.map(right, [(e, url, knobs) for e, url in zip(examples, urls)]))
            low, high = wilson(hits, count)
            print(f"  {name:<10} {hits:>4} of {count}  {100 * hits / count:5.1f}%  ({100 * low:.1f}-{100 * high:.1f})")


def picture(image, question: str, workdir: Path) -> int:
    image.save(workdir / "scene.png")
    out = workdir / "kept.png"
    print(f"\ndrawing which patches {question!r} kept (zspa-show, starts the model in-process) ...", flush=True)
    command = [sys.executable, "-m", "zspa_demo.show", "--demo", "--image", str(workdir / "scene.png"),
               "--question", question, "--keep-rates", "0.25,0.1", "--core-ratios", "0,0.2,1", "--out", str(out)]
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    if done.returncode != 0:
        print(f"zspa-show failed (exit {done.returncode}): {' '.join(command)}", file=sys.stderr)
        return 1
    for line in done.stdout.splitlines():  # its summary lines, not vLLM's log
        if line.startswith(("zspa,", "relevance,", "divprune,", "unpruned")):
            print("  " + line)
    print(f"\npicture: {out}\n(the same from the command line: zspa-show --demo --image IMAGE --question TEXT ...)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
