"""Call `tunesmith serve` with the official `openai` SDK: chat, streaming, and picking an adapter.

Start a server first, for example:

    tunesmith serve --model default --adapter support=runs/sft

then run:

    python examples/clients/python_openai.py --base-url http://127.0.0.1:8000/v1 --adapter support

The server speaks the OpenAI API, so nothing here is tunesmith-specific: the request's `model`
names the base model or one of the adapters. Set TUNESMITH_API_KEY when the server has a key.
"""

from __future__ import annotations

import argparse
import os

from openai import OpenAI


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--adapter", help="adapter name to use (default: the base model)")
    parser.add_argument("--question", default="What does json.dumps do?")
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()

    # The SDK insists on a key; a server without --api-key ignores it.
    client = OpenAI(base_url=args.base_url, api_key=os.environ.get("TUNESMITH_API_KEY", "unused"))

    models = [m.id for m in client.models.list().data]
    print("models:", ", ".join(models))
    base = models[0]  # the server lists the base model first, then its adapters
    model = args.adapter or base
    messages = [{"role": "system", "content": "You answer questions about Python briefly."},
                {"role": "user", "content": args.question}]

    # 1. A chat completion (greedy, so the answer is reproducible).
    reply = client.chat.completions.create(model=model, messages=messages, max_tokens=args.max_tokens,
                                           temperature=0)
    print(f"\n[{reply.model}] {reply.choices[0].message.content}")
    print(f"  finish_reason={reply.choices[0].finish_reason} usage={reply.usage.model_dump()}")

    # 2. The same question streamed token by token.
    print(f"\n[{model}, streamed] ", end="", flush=True)
    stream = client.chat.completions.create(model=model, messages=messages, max_tokens=args.max_tokens,
                                            temperature=0, stream=True)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            print(chunk.choices[0].delta.content, end="", flush=True)
    print()

    # 3. Base model versus adapter on the same question: one server, one request each.
    if args.adapter:
        for name in (base, args.adapter):
            answer = client.chat.completions.create(model=name, messages=messages, max_tokens=args.max_tokens,
                                                    temperature=0)
            print(f"\n[{name}] {answer.choices[0].message.content}")


if __name__ == "__main__":
    main()
