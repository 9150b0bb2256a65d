"""Write a benchmark's table into the docs between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->`` markers, so
the numbers in the docs are always the ones a script produced."""

from __future__ import annotations

from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "bundle" / "docs" / "README.md"


def replace_block(path: Path, name: str, text: str) -> None:
    """Replace the text between the ``name`` markers of ``path`` (usually :data:`DOCS`) with ``text`` (the markers
    must exist)."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    doc = Path(path).read_text()
    if begin not in doc or end not in doc:
        raise ValueError(f"{path} has no {begin} … {end} block.")
    head, rest = doc.split(begin, 1)
    _, tail = rest.split(end, 1)
    Path(path).write_text(f"{head}{begin}\n{text.rstrip()}\n{end}{tail}")


def run_main(parse_args, run, redraw, redraw_flag: str = "table_only") -> None:
    """A benchmark's ``__main__``: log to stdout, then either redraw its tables from the stored results (when the
    ``redraw_flag`` option is set: ``redraw(args)``) or run it and print where the results went (``run(args)``)."""
    import logging
    import sys

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    args = parse_args()
    if getattr(args, redraw_flag):
        redraw(args)
    else:
        print(run(args))
