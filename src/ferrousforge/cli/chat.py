"""`ferrousforge chat [MODEL]`: an interactive conversation.

Each turn sends the whole conversation again; the engine's prefix cache finds the
previous turn's tokens in the slot's KV, so only the new message is computed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from ferrousforge.cli.generate import options_from, stream_answer
from ferrousforge.cli.loading import add_model_arguments, load_cli_model
from ferrousforge.errors import FerrousForgeError
from ferrousforge.inference.backend import BackendInput

EPILOG = """examples:
  ferrousforge chat                                    # the bundled default model
  ferrousforge chat ./model.gguf --system "You are terse." --temperature 0.3

in the chat: /reset starts over, /exit (or Ctrl-D) quits, Ctrl-C stops an answer.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "chat",
        help="chat interactively with a model",
        description="Interactive chat; the conversation's KV cache is reused between turns.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", nargs="?", default=None, help="model path or alias (default: bundled)")
    p.add_argument("--quiet", action="store_true", help="no figures after each answer")
    add_model_arguments(p)
    p.set_defaults(func=run_chat)


def run_chat(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_chat(args))
    except (FerrousForgeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _read(prompt: str) -> str | None:
    try:
        return input(prompt)
    except EOFError:
        return None


async def _chat(args: argparse.Namespace) -> int:
    backend, lm, mid = load_cli_model(args.model, args)
    if not lm.model.chat_template:
        raise FerrousForgeError(f"{mid} has no chat template: use `ferrousforge run --raw`")
    start = [{"role": "system", "content": args.system}] if args.system else []
    messages = list(start)
    print(f"chatting with {mid} (/reset, /exit)", file=sys.stderr)
    try:
        while True:
            line = await asyncio.to_thread(_read, ">>> ")
            if line is None or line.strip() in ("/exit", "/quit"):
                return 0
            if line.strip() == "/reset":
                messages = list(start)
                continue
            if not line.strip():
                continue
            messages.append({"role": "user", "content": line})
            ids = backend.prompt_ids(lm.handle, BackendInput.Chat(messages))
            try:
                answer = await stream_answer(backend, lm, ids, options_from(args))
            except (asyncio.CancelledError, KeyboardInterrupt):
                messages.pop()
                print("\n(stopped)", file=sys.stderr)
                continue
            messages.append({"role": "assistant", "content": answer.text})
            if not args.quiet:
                print(f"[{answer.figures()}]", file=sys.stderr)
    finally:
        await backend.unload_model(lm.handle)
