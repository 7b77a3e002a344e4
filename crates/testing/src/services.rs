//! Service fixtures: how tests find or start Redis and PostgreSQL (being written).
