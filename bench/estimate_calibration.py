"""``python -m bench.estimate_calibration``: the stream estimate's chars/4 rule against a real tokenizer.

The fixture corpus (tests/instrumentation/test_estimate_error.py) compares the estimate
with provider numbers that were written to exercise normalization, not to match their
text. This one-off calibration compares it with OpenAI's o200k_base tokenizer (gpt-4o,
gpt-4.1, o-series, gpt-5) on text this repository has: English prose (the paragraphs of
docs/*.md but architecture.md), Python (costwatch/**/*.py) and JSON (the response fixtures).

- output: ⌈chars / 4⌉ (`estimate.tokens_from_chars`) against the text's o200k tokens;
- input: `estimate.input_tokens` of a chat request (a system and a user message, two doc
  paragraphs) against o200k tokens of the contents + 3 per message + 3 (OpenAI's
  documented count for its chat models), next to the whole-messages-JSON / 4 that
  costwatch used before.

Needs ``pip install bpe-openai==0.1.4`` (its wheel carries the tokenizer data; not a
costwatch dependency). Prints a Markdown table; docs/architecture.md quotes it.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from costwatch.instrumentation import estimate

ROOT = Path(__file__).resolve().parent.parent


def units() -> dict[str, list[str]]:
    prose = []
    for path in sorted((ROOT / "docs").glob("*.md")):
        if path.name == "architecture.md":
            continue  # it quotes this table: its paragraphs would move the figures they report
        for block in path.read_text().split("\n\n"):
            text = block.strip()
            if len(text) >= 200 and not text.startswith(("|", "```", "    ")):
                prose.append(text)
    code = [p.read_text() for p in sorted((ROOT / "costwatch").rglob("*.py")) if p.stat().st_size > 200]
    fixtures = sorted((ROOT / "tests" / "fixtures" / "responses").glob("*.json"))
    data = [p.read_text() for p in fixtures if not p.name.endswith(".expected.json")]
    return {
        "English prose (docs paragraphs)": prose,
        "Python (costwatch/*.py)": code,
        "JSON (response fixtures, pretty-printed)": data,
    }


def _q(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]


def main() -> int:
    try:
        import bpe_openai
    except ImportError:
        print("needs: pip install bpe-openai==0.1.4", file=sys.stderr)
        return 2
    enc = bpe_openai.get_encoding("o200k_base")

    def count(text: str) -> int:
        return len(enc.encode(text))

    print("Output: ⌈chars/4⌉ against o200k_base tokens (error = estimate / real − 1)\n")
    print("| text | units | chars per token (median) | median error | p10 … p90 error |")
    print("|---|---|---|---|---|")
    for name, texts in units().items():
        real = [count(t) for t in texts]
        errors = [estimate.tokens_from_chars(len(t)) / r - 1 for t, r in zip(texts, real, strict=True)]
        ratio = statistics.median(len(t) / r for t, r in zip(texts, real, strict=True))
        print(
            f"| {name} | {len(texts)} | {ratio:.2f} | {statistics.median(errors):+.0%} |"
            f" {_q(errors, 0.1):+.0%} … {_q(errors, 0.9):+.0%} |"
        )

    prose = units()["English prose (docs paragraphs)"]
    new, old = [], []
    for i in range(len(prose) - 1):
        messages = [{"role": "system", "content": prose[i]}, {"role": "user", "content": prose[i + 1]}]
        real = count(prose[i]) + count(prose[i + 1]) + 3 * 2 + 3
        new.append(estimate.input_tokens({"model": "gpt-4o", "messages": messages}) / real - 1)
        old.append(max(1, len(json.dumps(messages)) // 4) / real - 1)
    print(
        "\nInput: a system + a user message (consecutive doc paragraphs), against o200k tokens + 3/message + 3\n"
    )
    print("| estimate | requests | median error | p10 … p90 error |")
    print("|---|---|---|---|")
    for label, errors in (("prompt text / 4 + overheads (now)", new), ("messages JSON / 4 (before)", old)):
        print(
            f"| {label} | {len(errors)} | {statistics.median(errors):+.0%} |"
            f" {_q(errors, 0.1):+.0%} … {_q(errors, 0.9):+.0%} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
