"""Compare two runs of llama-server's test suite (scripts/llama_server_suite.sh): of the tests
llama-server passes, how many FerrousForge passes, per file, and which it fails.

    python scripts/llama_server_suite_report.py [.cache/llama-server-suite] [--failures]
    python scripts/llama_server_suite_report.py --passed-ids > ids.txt   # for SUITE_ONLY
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path


def outcomes(xml: Path) -> dict[str, str]:
    """test id -> passed / failed / skipped."""
    out = {}
    for case in ET.parse(xml).iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        if case.find("failure") is not None or case.find("error") is not None:
            out[name] = "failed"
        elif case.find("skipped") is not None:
            out[name] = "skipped"
        else:
            out[name] = "passed"
    return out


def main(argv: list[str]) -> int:
    folder = Path(next((a for a in argv if not a.startswith("-")), ".cache/llama-server-suite"))
    if "--passed-ids" in argv:  # the test ids llama-server passes, for SUITE_ONLY
        for t, o in outcomes(folder / "llama-server.xml").items():
            if o == "passed":
                module, name = t.split("::", 1)
                print(f"{module.replace('.', '/')}.py::{name}")
        return 0
    ref, ours = outcomes(folder / "llama-server.xml"), outcomes(folder / "ferrousforge.xml")
    passed = [t for t, o in ref.items() if o == "passed"]
    per_file, ours_per_file = Counter(), Counter()
    failing = []
    for t in passed:
        module = t.split("::")[0]
        per_file[module] += 1
        if ours.get(t) == "passed":
            ours_per_file[module] += 1
        else:
            failing.append(f"{t} ({ours.get(t, 'not run')})")
    for module in sorted(per_file):
        print(f"{module:40} {ours_per_file[module]:3} / {per_file[module]:3}")
    total = sum(ours_per_file.values())
    share = 100 * total / len(passed) if passed else 0.0
    print(f"{'total':40} {total:3} / {len(passed):3}  ({share:.1f}% of llama-server's passes)")
    extra = [t for t, o in ours.items() if o == "passed" and ref.get(t) != "passed"]
    print(f"FerrousForge also passes {len(extra)} tests llama-server does not")
    if "--failures" in argv:
        print("\n".join(failing))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
