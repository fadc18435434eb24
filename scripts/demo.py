"""``make demo``: start zspa-serve with the built-in demo model, send one image request
unpruned and one with keep_rate=0.25, print what pruning changed, stop the server.

    python scripts/demo.py [--keep-running]
"""

from __future__ import annotations

import argparse
import base64
import io
import sys
import tempfile
from pathlib import Path

from openai import OpenAI
from PIL import Image, ImageDraw

from server.launch import ServerProcess

QUESTION = "What color is the big circle?"


def demo_image() -> str:
    image = Image.new("RGB", (640, 480), "white")
    draw = ImageDraw.Draw(image)
    draw.ellipse((120, 80, 420, 380), fill="red")
    draw.rectangle((460, 300, 600, 440), fill="blue")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def ask(client: OpenAI, model: str, image_url: str, **knobs):
    messages = [
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": image_url}}, {"type": "text", "text": QUESTION}],
        }
    ]
    return client.chat.completions.create(model=model, messages=messages, max_tokens=8, extra_body=knobs or None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep-running", action="store_true", help="leave the server running at the end")
    args = parser.parse_args()

    log = Path(tempfile.gettempdir()) / "zspa-demo-server.log"
    print(f"starting zspa-serve --demo (log: {log}) ...", flush=True)
    server = ServerProcess(["--demo"], log)
    try:
        seconds = server.wait_healthy(progress=lambda s: print(f"\r  waiting for /health: {s:4.0f} s", end="", flush=True))
        print(f"\rserver healthy after {seconds:.0f} s at {server.base_url}          ")
        client = OpenAI(base_url=f"{server.base_url}/v1", api_key="none")
        model = client.models.list().data[0].id
        print(f"model: {model}\n")
        image = demo_image()
        rows = [("unpruned", ask(client, model, image)), ("keep_rate=0.25", ask(client, model, image, keep_rate=0.25))]
        print(f"{'request':<16} {'prompt tokens':>13} {'visual tokens kept':>19}")
        for name, response in rows:
            usage = response.usage.model_dump()
            print(f"{name:<16} {usage['prompt_tokens']:>13} {usage['visual_tokens_kept']:>10} of {usage['visual_tokens']:<6}")
        print("\n(the demo model has random weights: its answers are meaningless)")
        if args.keep_running:
            print(f"server left running at {server.base_url} (pid {server.proc.pid})")
            return 0
    except Exception as error:  # show the server's side of the story
        print(f"\ndemo failed: {error}\n--- server log tail ---\n{server.log_tail()}", file=sys.stderr)
        server.stop()
        return 1
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
