"""The parameter tables in docs/hypervisors/*.md are generated from the schemas.

To regenerate them after changing a schema:
``.venv/bin/python -m tests.unit.hypervisor.test_hv_docs``.
"""

from __future__ import annotations

import re
from pathlib import Path

from corral.objects.params.hv import FAKE_HVPARAMS, KVM_HVPARAMS
from corral.objects.params.spec import Schema

DOCS = Path(__file__).resolve().parents[3] / "docs" / "hypervisors"
TABLES: dict[str, tuple[str, Schema]] = {
    "kvm.md": ("hvparams/kvm", KVM_HVPARAMS),
    "fake.md": ("hvparams/fake", FAKE_HVPARAMS),
}


def _block(marker: str) -> re.Pattern[str]:
    return re.compile(
        rf"(<!-- BEGIN {re.escape(marker)}[^\n]*-->\n)(.*?)(<!-- END {re.escape(marker)} -->)",
        re.S,
    )


def render(text: str, marker: str, schema: Schema) -> str:
    return _block(marker).sub(lambda m: m.group(1) + schema.doc_table() + "\n" + m.group(3), text)


def test_docs_tables_match_the_schemas():
    for doc, (marker, schema) in TABLES.items():
        text = (DOCS / doc).read_text()
        assert _block(marker).search(text), f"{doc}: markers for {marker} missing"
        assert render(text, marker, schema) == text, (
            f"{doc} is out of date: run python -m tests.unit.hypervisor.test_hv_docs"
        )


if __name__ == "__main__":
    for doc, (marker, schema) in TABLES.items():
        path = DOCS / doc
        path.write_text(render(path.read_text(), marker, schema))
