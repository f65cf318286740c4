"""`ferrousforge run [MODEL] PROMPT`: one answer streamed to the terminal, then its figures."""

from __future__ import annotations

import argparse
import asyncio
import sys

from ferrousforge.cli.generate import options_from, stream_answer
from ferrousforge.cli.loading import add_model_arguments, load_cli_model
from ferrousforge.errors import FerrousForgeError
from ferrousforge.inference.backend import BackendInput

EPILOG = """examples:
  ferrousforge run "Write a haiku about rust"          # the bundled default model
  ferrousforge run ./model.gguf "Explain KV caches" --max-tokens 200
  ferrousforge run smollm2-135m-instruct "Hi" --temperature 0
  echo "Once upon a time" | ferrousforge run --raw -
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="answer one prompt, streaming to the terminal",
        description="Generate one answer and print figures (tokens/s, time to "
        "first token) on stderr.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "words",
        nargs="+",
        metavar="[MODEL] PROMPT",
        help="model path or alias (optional), then the prompt ('-' reads stdin)",
    )
    p.add_argument(
        "--raw",
        action="store_true",
        help="complete the prompt as plain text instead of through the chat template",
    )
    add_model_arguments(p)
    p.set_defaults(func=run_run)


def run_run(args: argparse.Namespace) -> int:
    if len(args.words) > 2:
        print("error: expected [MODEL] PROMPT (quote the prompt)", file=sys.stderr)
        return 2
    model, prompt = (None, args.words[0]) if len(args.words) == 1 else args.words
    if prompt == "-":
        prompt = sys.stdin.read()
    try:
        return asyncio.run(_run(model, prompt, args))
    except (FerrousForgeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


async def _run(model: str | None, prompt: str, args: argparse.Namespace) -> int:
    backend, lm, _ = load_cli_model(model, args)
    try:
        if args.raw or not lm.model.chat_template:
            ids = backend.tokenize(lm.handle, prompt)
        else:
            messages = [{"role": "system", "content": args.system}] if args.system else []
            messages.append({"role": "user", "content": prompt})
            ids = backend.prompt_ids(lm.handle, BackendInput.Chat(messages))
        answer = await stream_answer(backend, lm, ids, options_from(args))
        print(answer.figures(), file=sys.stderr)
    finally:
        await backend.unload_model(lm.handle)
    return 0
