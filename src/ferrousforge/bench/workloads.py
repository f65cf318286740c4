"""The prompts of `bench serve`'s workloads (``--workload``, compare.sh's WORKLOAD).

- ``fresh``: about ``prompt_tokens`` common words after a unique ``Request <n>:``; no
  prefix cache helps and the answer has nothing to copy.
- ``repetitive``: the answer copies from the prompt (repeat a ~100-token passage, or fix
  one typo in a code block), what n-gram / prompt-lookup speculative decoding speeds up.
  Each prompt still starts with a unique ``Request <n>.`` so no prefix cache helps.
- ``returning``: ``fresh`` prompts, each sent twice: a first round, then the same prompts
  again (serve_bench reports the returning round's TTFT apart), what a host-RAM prompt
  cache speeds up.
"""

from __future__ import annotations

from ferrousforge.bench.prompts import text_prompt

WORKLOADS = ("fresh", "repetitive", "returning")

# About 100 tokens each with SmolLM2's tokenizer; plain prose a small model copies well.
PASSAGES = (
    "The lighthouse stood at the edge of the northern cliffs for more than two hundred "
    "years. Every night its keeper climbed the narrow stairs, trimmed the wick and wound the "
    "clockwork that turned the great lens, so that ships passing the reef could see the slow "
    "white flash and keep their distance from the rocks. In winter the storms came in from the "
    "sea without warning, and the keeper wrote in his log the hour of each gale, the height "
    "of the waves and the names of the ships that sheltered in the bay.",
    "Bread is made from four simple things: flour, water, salt and yeast. The baker mixes "
    "them into a rough dough and then kneads it for ten minutes, until it is smooth and "
    "springs back when pressed. The dough rests in a warm place for an hour and doubles in "
    "size. It is then shaped into a loaf, left to rise a second time, and baked in a hot oven "
    "until the crust is brown and the loaf sounds hollow when tapped on the bottom.",
    "A river begins as rain falling on high ground. The water runs down the slopes in small "
    "streams, which join together in the valleys and grow wider and deeper as they go. On its "
    "way to the sea the river carries sand and stones, cuts through soft rock, and leaves "
    "rich soil on the plains where it floods each spring. Towns were built beside rivers "
    "because they gave people water to drink, fish to eat and a road for boats to carry goods.",
    "The library opens at nine in the morning and closes at six in the evening, except on "
    "Sundays, when it is closed all day. Members may borrow up to eight books at a time for "
    "three weeks, and a loan can be renewed twice unless another member has asked for the "
    "book. Newspapers and magazines stay in the reading room. Please keep your phone on "
    "silent, eat only in the cafe on the ground floor, and return books to the desk by the door.",
)

# Code blocks with one typo each (the name to fix appears correctly elsewhere in the block).
CODE_BLOCKS = (
    "def average(values):\n"
    "    total = 0\n"
    "    for value in values:\n"
    "        total += vaule\n"
    "    if not values:\n"
    "        return 0.0\n"
    "    return total / len(values)\n\n\n"
    "def largest(values):\n"
    "    best = values[0]\n"
    "    for value in values[1:]:\n"
    "        if value > best:\n"
    "            best = value\n"
    "    return best\n",
    "class Counter:\n"
    "    def __init__(self):\n"
    "        self.counts = {}\n\n"
    "    def add(self, word):\n"
    "        self.counts[word] = self.counts.get(word, 0) + 1\n\n"
    "    def most_common(self, n):\n"
    "        items = sorted(self.counts.items(), key=lambda kv: kv[1], reverse=True)\n"
    "        return itmes[:n]\n\n"
    "    def total(self):\n"
    "        return sum(self.counts.values())\n",
    "function formatPrice(amount, currency) {\n"
    "  const rounded = Math.round(amount * 100) / 100;\n"
    "  const text = rounded.toFixed(2);\n"
    "  if (currency === 'EUR') {\n"
    "    return text + ' EUR';\n"
    "  }\n"
    "  return currency + ' ' + txet;\n"
    "}\n\n"
    "function sumPrices(items) {\n"
    "  return items.reduce((sum, item) => sum + item.price, 0);\n"
    "}\n",
    "def read_config(path):\n"
    "    settings = {}\n"
    "    with open(path) as handle:\n"
    "        for line in handle:\n"
    "            line = line.strip()\n"
    "            if not line or line.startswith('#'):\n"
    "                continue\n"
    "            key, _, value = line.partition('=')\n"
    "            settings[key.strip()] = value.strip()\n"
    "    return setings\n",
)


def repetitive_prompt(index: int) -> str:
    """Prompt ``index`` of the repetitive workload: even indices repeat a passage, odd ones
    fix a typo in a code block; the answer is mostly a copy of the prompt."""
    head = f"Request {index}."
    if index % 2 == 0:
        passage = PASSAGES[(index // 2) % len(PASSAGES)]
        return f"{head} Repeat the following text exactly.\n\nText:\n{passage}\n\nRepeated text:\n"
    code = CODE_BLOCKS[(index // 2) % len(CODE_BLOCKS)]
    return (
        f"{head} Fix the typo in this code and write out the whole corrected code.\n\n"
        f"```\n{code}```\n\nCorrected code:\n```\n"
    )


def workload_prompt(workload: str, index: int, prompt_tokens: int) -> str:
    """The prompt of request ``index`` (``returning``'s second round reuses the index)."""
    if workload == "repetitive":
        return repetitive_prompt(index)
    if workload in ("fresh", "returning"):
        return text_prompt(index, max(1, prompt_tokens))
    raise ValueError(f"workload: expected one of {', '.join(WORKLOADS)}, got {workload!r}")
