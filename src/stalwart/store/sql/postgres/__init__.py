"""PostgreSQL schema migrations (``NNNN_name.sql``), applied in the store's schema."""
