//! Model-based property tests against a `BTreeMap` model (being written).
