"""The export's own JSON writer writes exactly what json.dumps writes, for any row."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from frontdesk.storage.export import json_object
from frontdesk.storage.logs import EXPORT_COLUMNS

VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(),  # any Unicode: quotes, backslashes, control characters, emoji, lone surrogates
)


@given(st.lists(VALUES, min_size=len(EXPORT_COLUMNS), max_size=len(EXPORT_COLUMNS)))
def test_a_row_encodes_as_json_dumps_would(values: list[object]) -> None:
    expected = json.dumps(dict(zip(EXPORT_COLUMNS, values, strict=True)), ensure_ascii=False)
    assert json_object(values) == expected
