"""Screenshots of an atlas for the docs: search results, a feature card, a neighbourhood graph.

Drives headless Chromium over the DevTools protocol (tests/browser.py): types QUERY into the
search, opens the first result (or --feature INDEX), and writes three PNGs into OUT_DIR.

    python scripts/atlas_screenshots.py sccircuits-demo/atlas.html docs --query CD74
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def main() -> None:
    from browser import Browser

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("atlas", type=Path)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--query", required=True, help="text typed into the search box")
    ap.add_argument("--result", type=int, default=0, help="which search result to open (0 = first)")
    ap.add_argument("--hops", type=int, default=1, choices=(1, 2), help="hops shown in the neighbourhood shot")
    ap.add_argument("--prefix", default="atlas")
    args = ap.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    with Browser(width=1280, height=860) as b:
        b.open(args.atlas)
        b.wait_for("window.atlas && window.atlas.ready")
        b.type_text("#search", args.query)
        b.wait_for("document.querySelectorAll('#results li.result').length")
        b.screenshot(args.out_dir / f"{args.prefix}-search.png")
        b.click_selector(f"#results li.result:nth-of-type({args.result + 1})")
        b.wait_for("!!document.getElementById('card-title')")
        b.evaluate("new Promise(r => setTimeout(r, 300))")
        b.screenshot(args.out_dir / f"{args.prefix}-card.png")
        if args.hops == 2:
            b.evaluate("(() => { const s = document.getElementById('hops'); s.value = '2';"
                       " s.dispatchEvent(new Event('change', {bubbles: true})); })()")
        b.evaluate("document.getElementById('graph').scrollIntoView({block: 'center'})")
        b.evaluate("new Promise(r => setTimeout(r, 500))")
        b.screenshot(args.out_dir / f"{args.prefix}-neighbourhood.png")
        if b.console:
            raise SystemExit(f"console messages: {b.console}")
    for kind in ("search", "card", "neighbourhood"):
        print(args.out_dir / f"{args.prefix}-{kind}.png")


if __name__ == "__main__":
    main()
