"""The referral mechanism's memory: one de-identified record per referral, kept in a database
after Temporal has forgotten the referral, and the reports made from it.

- `ledger.record`: the record (pure pydantic models) and the code lists (decline codes, service
  outcomes, closure reasons). Nothing in it identifies the person: no pseudonym, phone, notes,
  free text, officer id or external_ref, and every text field is a code.
- `ledger.schema`, `ledger.store`: the tables (SQLAlchemy 2) and the store that writes and reads
  them; `ledger.migrations`: the Alembic migrations (`referral ledger upgrade`).
- `ledger.reports`: the aggregates, pure functions over records, with small-cell suppression.

It imports nothing of the workflows, activities, starter or web app: they import it.
"""
