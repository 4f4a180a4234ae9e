"""docs/ops.md is generated from the op table: it must match what `python -m hwopt.opsdoc` prints."""
from pathlib import Path

from hwopt.ir import OP_DOCS, OPS
from hwopt.opsdoc import markdown

DOC = Path(__file__).resolve().parent.parent / "docs" / "ops.md"


def test_ops_doc_is_generated_from_the_table():
    assert DOC.read_text(encoding="utf-8") == markdown(), "regenerate: python -m hwopt.opsdoc > docs/ops.md"


def test_every_op_is_documented_and_listed():
    assert set(OP_DOCS) == set(OPS)
    text = markdown()
    assert all(f"| `{op}` |" in text for op in OPS)
